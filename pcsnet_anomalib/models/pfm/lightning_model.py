"""PFM and PEFM as anomalib models: feature mapping between two frozen backbones, trained on normal images.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from pcsnet_anomalib import Pefm
    >>> engine = Engine(max_epochs=200)  # doctest: +SKIP
    >>> engine.train(Pefm(), datamodule=MVTecAD(category="bottle", train_batch_size=16))  # doctest: +SKIP

``Pfm`` is the PFM paper's best variant, MB-PFM (bidirectional mapping at three levels); ``Pefm`` is the same
network with PEFM's fixed position encoding and PEFM's settings. The authors train 200 epochs at batch 8 (PFM)
or 16 (PEFM): a trainer and a datamodule setting (``configs/pfm_mvtec_ad.yaml``, ``configs/pefm_mvtec_ad.yaml``).
"""

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torchvision.transforms.v2 import Compose, Resize

from pcsnet_anomalib.data.validation import check_datamodule_files, check_normal_training_set
from pcsnet_anomalib.models.components import ArchitectureCheckpointMixin, check_finite_loss

from .loss import PfmLoss
from .torch_model import PfmModel, PfmTrainingOutput

logger = logging.getLogger(__name__)

# What Pfm/Pefm add to a Lightning checkpoint beside the state dict: the architecture, to refuse another
# model's checkpoint by name (ArchitectureCheckpointMixin).
CHECKPOINT_KEY = "pfm"
CHECKPOINT_FORMAT = 1


class Pfm(ArchitectureCheckpointMixin, AnomalibModule):
    """PFM (MB-PFM): bidirectional feature mapping between two frozen backbones at three levels.

    Defaults are the authors' (``MB-PFM-ResNet.py`` and its published log): torchvision ImageNet ResNet34 ->
    ResNet50, layers 1-3, latent widths 200/400/900, Adam with learning rates 3e-3/3e-4/3e-4 per level and
    weight decay 1e-5, inputs resized to 256 px without crop, anomaly map = mean of the three upsampled levels
    without blur, image score = its maximum.

    Args:
        source_backbone, target_backbone: timm names of the two networks (any pair of CNNs whose ``layers``
            have equal strides; widths are read from the networks).
        layers: the levels in both backbones.
        latent_dims: bottleneck width per level.
        position_encoding: add PEFM's fixed 2-D sine/cosine encoding to the mapping inputs (``Pefm``'s default).
        pre_trained: load pretrained backbone weights through timm (needs the hub or its cache).
        source_weights, target_weights: local weight files, or packaged weights such as
            ``"package:efficientnet_lite0"`` / ``"package:efficientnet_lite2"``: load offline and take precedence
            over ``pre_trained``.
        seed: seeds the mapping networks' initial weights; torch's global RNG is not used or changed.
        learning_rates: Adam learning rate per level.
        weight_decay: Adam's (coupled) L2 weight decay.
        pre_processor, post_processor, evaluator, visualizer: anomalib components (``True`` = default).
    """

    checkpoint_key = CHECKPOINT_KEY
    checkpoint_format = CHECKPOINT_FORMAT
    checkpoint_writer = "Pfm or Pefm"

    def __init__(
        self,
        source_backbone: str = "resnet34.tv_in1k",
        target_backbone: str = "resnet50.tv_in1k",
        layers: Sequence[str] = ("layer1", "layer2", "layer3"),
        latent_dims: Sequence[int] = (200, 400, 900),
        position_encoding: bool = False,
        pre_trained: bool = True,
        source_weights: str | None = None,
        target_weights: str | None = None,
        seed: int = 0,
        learning_rates: Sequence[float] = (3e-3, 3e-4, 3e-4),
        weight_decay: float = 1e-5,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        if len(learning_rates) != len(layers):
            msg = f"learning_rates {list(learning_rates)} must give one rate per layer of {list(layers)}."
            raise ValueError(msg)
        self.learning_rates = [float(rate) for rate in learning_rates]
        self.weight_decay = weight_decay
        self.model = PfmModel(
            source_backbone=source_backbone,
            target_backbone=target_backbone,
            layers=layers,
            latent_dims=latent_dims,
            position_encoding=position_encoding,
            pre_trained=pre_trained,
            source_weights=source_weights,
            target_weights=target_weights,
            seed=seed,
        )
        self.loss = PfmLoss()

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize to ``image_size`` (256 x 256, the authors' size; no crop); the model normalises per backbone."""
        return PreProcessor(transform=Compose([Resize(image_size or (256, 256), antialias=True)]))

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> "Pfm":
        """Load a trained model; the backbones' weights come from the checkpoint, so nothing is downloaded.

        Arguments given in ``kwargs`` override the saved hyper-parameters as in Lightning.
        """
        kwargs.setdefault("pre_trained", False)
        kwargs.setdefault("source_weights", None)
        kwargs.setdefault("target_weights", None)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def architecture(self) -> dict[str, Any]:
        """The settings that define the model's tensors and maps, saved in checkpoints."""
        return {
            "model": type(self).__name__,
            "source_backbone": self.hparams.get("source_backbone"),
            "target_backbone": self.hparams.get("target_backbone"),
            "layers": list(self.hparams.get("layers", ())),
            "latent_dims": list(self.hparams.get("latent_dims", ())),
            "position_encoding": self.hparams.get("position_encoding"),
        }

    def architecture_differences(self, saved: Mapping[str, Any]) -> list[str]:
        """The position encoding: no tensor shows it (it is computed, not stored); the shapes agree, the maps not."""
        if bool(saved.get("position_encoding")) == bool(self.hparams.get("position_encoding")):
            return []
        checkpoint_value, model_value = saved.get("position_encoding"), self.hparams.get("position_encoding")
        return [f"position_encoding differs (checkpoint {checkpoint_value}, model {model_value})"]

    def setup(self, stage: str) -> None:
        """Check the stage's image files, and refuse abnormal training images, before any work is done."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        check_datamodule_files(datamodule, stage)
        check_normal_training_set(datamodule, stage, type(self).__name__)

    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Map the normal images' features both ways at every level; the loss is the mean squared error."""
        del args, kwargs
        outputs = self.model(batch.image)
        assert isinstance(outputs, PfmTrainingOutput)  # the torch model is in training mode
        losses = self.loss(outputs)
        check_finite_loss(losses, self.current_epoch, self.global_step)
        batch_size = batch.image.shape[0]
        self.log("train_loss", losses["loss"], prog_bar=True, batch_size=batch_size)
        level_terms = {f"train_{name}": value for name, value in losses.items() if name != "loss"}
        self.log_dict(level_terms, batch_size=batch_size)
        return {"loss": losses["loss"]}

    def validation_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Predict anomaly maps and scores for validation images."""
        del args, kwargs
        predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """One Adam with a parameter group per level: the authors' three Adams, one per level, step for step."""
        return torch.optim.Adam(
            [
                {"params": mapping.parameters(), "lr": rate}
                for mapping, rate in zip(self.model.mappings, self.learning_rates, strict=True)
            ],
            weight_decay=self.weight_decay,
        )

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No gradient clipping and no sanity validation; the epochs are the trainer's (200 in the papers)."""
        return {"gradient_clip_val": 0, "num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """ONE_CLASS: trained on normal images only."""
        return LearningType.ONE_CLASS


class Pefm(Pfm, AnomalibModule):
    """PEFM: :class:`Pfm` with the fixed 2-D position encoding on the mapping inputs, at PEFM's settings.

    Differences from ``Pfm``'s defaults (the PEFM paper and its published logs): ``position_encoding=True``,
    latent widths 200/400/**800** (the code's later default of 900 is not what produced the results), learning
    rate 3e-4 at every level. The authors train at batch 16 (a datamodule setting). ``AnomalibModule`` is a
    direct base as well, so that anomalib's ``get_model("pefm")`` and ``list_models()`` find it.

    Args: as :class:`Pfm`.
    """

    def __init__(
        self,
        source_backbone: str = "resnet34.tv_in1k",
        target_backbone: str = "resnet50.tv_in1k",
        layers: Sequence[str] = ("layer1", "layer2", "layer3"),
        latent_dims: Sequence[int] = (200, 400, 800),
        position_encoding: bool = True,
        pre_trained: bool = True,
        source_weights: str | None = None,
        target_weights: str | None = None,
        seed: int = 0,
        learning_rates: Sequence[float] = (3e-4, 3e-4, 3e-4),
        weight_decay: float = 1e-5,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        super().__init__(
            source_backbone=source_backbone,
            target_backbone=target_backbone,
            layers=layers,
            latent_dims=latent_dims,
            position_encoding=position_encoding,
            pre_trained=pre_trained,
            source_weights=source_weights,
            target_weights=target_weights,
            seed=seed,
            learning_rates=learning_rates,
            weight_decay=weight_decay,
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
