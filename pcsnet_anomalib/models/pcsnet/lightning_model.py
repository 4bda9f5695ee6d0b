"""PCSNet as an anomalib model: few-shot training with pseudo-anomalies, anomalib inference.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from pcsnet_anomalib import Pcsnet
    >>> engine = Engine(max_epochs=50)  # doctest: +SKIP
    >>> engine.train(Pcsnet(), datamodule=MVTecAD(category="bottle"))  # doctest: +SKIP

The model trains on whatever the datamodule gives, at the datamodule's batch size, for the trainer's
``max_epochs``: the paper's protocol (8 images, batch 2, 50 epochs) is a datamodule and trainer setting,
e.g. ``KShotMVTecAD(k_shot=8, train_batch_size=2)`` and ``Engine(max_epochs=50)`` (``configs/mvtec_ad.yaml``).
"""

import logging
from collections.abc import Sequence
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
from torchvision.transforms.v2 import CenterCrop, Compose, Resize

from pcsnet_anomalib.data.validation import check_datamodule_files, check_normal_training_set
from pcsnet_anomalib.models.components import (
    IncompatibleCheckpointError,
    check_finite_loss,
    shape_differences,
)

from .loss import PcsnetLoss
from .synthesis_presets import DEFAULT_PRESET, preset_for_datamodule
from .torch_model import PcsnetModel, PcsnetTrainingOutput

logger = logging.getLogger(__name__)

# What Pcsnet adds to a Lightning checkpoint beside the state dict (weights, prototypes, radius, and the random
# streams and preset of the modules that draw): the architecture, to refuse another model's checkpoint by name.
CHECKPOINT_KEY = "pcsnet"
CHECKPOINT_FORMAT = 2
_DYNAMIC_BUFFERS = ("model.memory.",)  # sized at training time; their shapes come from the checkpoint


class Pcsnet(AnomalibModule):
    """PCSNet: prototypical feature adaptation + context-aware segmentation, trained few-shot.

    Args:
        backbone: timm backbone; the default is the paper's (torchvision ImageNet WideResNet-50-2).
        layers: backbone levels (strides 4, 8, 16).
        pre_trained: load pretrained backbone weights through timm (needs the hub or its cache).
        backbone_weights: local weights file for the backbone (or ``"package:efficientnet_lite0"``);
            loads offline and takes precedence over ``pre_trained``.
        seed: seeds the initial weights, the pseudo-anomalies, the mixing of the batch and the CAS dropout
            (each from a generator of its own, saved in checkpoints); torch's global RNG is not used or changed.
        synthesis_preset: pseudo-anomaly preset, ``"<dataset>/<category>"`` or ``"default"``;
            ``None`` picks the preset of the datamodule's dataset and category when one exists.
        rotation_sensitive: use the channel-halving descriptor (the paper does for grid, screw and
            some MPDD classes); ``None`` takes it from ``synthesis_preset`` (False when unset).
        grid_stride, cas_channels, prior_channels, n_nearest, blur_sigma: see :class:`PcsnetModel`.
        pfa_lr, cas_lr, weight_decay: Adam (amsgrad) settings: 1e-3, 1e-4 and 1e-5 in the paper.
        nu, alpha, pdc_top_k, official_anomalous_term: see :class:`PcsnetLoss`.
        pre_processor, post_processor, evaluator, visualizer: anomalib components (``True`` = default).
    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2.tv_in1k",
        layers: Sequence[str] = ("layer1", "layer2", "layer3"),
        pre_trained: bool = True,
        backbone_weights: str | None = None,
        seed: int = 0,
        synthesis_preset: str | None = None,
        rotation_sensitive: bool | None = None,
        grid_stride: float = 3.5,
        cas_channels: int | None = None,
        prior_channels: int = 200,
        n_nearest: int = 3,
        blur_sigma: float = 4.0,
        pfa_lr: float = 1e-3,
        cas_lr: float = 1e-4,
        weight_decay: float = 1e-5,
        nu: float = 1e-3,
        alpha: float = 0.2,
        pdc_top_k: int = 50,
        official_anomalous_term: bool = False,
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
        self.pfa_lr = pfa_lr
        self.cas_lr = cas_lr
        self.weight_decay = weight_decay
        self.model = PcsnetModel(
            backbone=backbone,
            layers=layers,
            pre_trained=pre_trained,
            backbone_weights=backbone_weights,
            reduce_channels=rotation_sensitive,
            grid_stride=grid_stride,
            cas_channels=cas_channels,
            prior_channels=prior_channels,
            n_nearest=n_nearest,
            blur_sigma=blur_sigma,
            synthesis_preset=synthesis_preset,
            seed=seed,
            keep_anomalous_distances=official_anomalous_term,
        )
        self.loss = PcsnetLoss(
            nu=nu,
            alpha=alpha,
            pdc_top_k=pdc_top_k,
            official_anomalous_term=official_anomalous_term,
        )
        self._epoch_start_patches = (0, 0)

    @classmethod
    def configure_pre_processor(
        cls,
        image_size: tuple[int, int] | None = None,
        center_crop_size: tuple[int, int] | None = None,
    ) -> PreProcessor:
        """Resize (256) and centre-crop (224) as the paper does; no normalisation here.

        The model normalises with its backbone's statistics itself, so pseudo-anomalies are
        synthesised on natural ``[0, 1]`` images. Given only ``image_size``, images are resized
        to it without cropping.
        """
        if image_size is None and center_crop_size is None:
            image_size, center_crop_size = (256, 256), (224, 224)
        transforms: list[Any] = []
        if image_size is not None:
            transforms.append(Resize(image_size, antialias=True))
        if center_crop_size is not None:
            if image_size is not None and (center_crop_size[0] > image_size[0] or center_crop_size[1] > image_size[1]):
                msg = f"Center crop size {center_crop_size} cannot be larger than image size {image_size}."
                raise ValueError(msg)
            transforms.append(CenterCrop(center_crop_size))
        return PreProcessor(transform=Compose(transforms))

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> "Pcsnet":
        """Load a trained model; the backbone's weights come from the checkpoint, so nothing is downloaded.

        Arguments given in ``kwargs`` override the saved hyper-parameters as in Lightning.
        """
        kwargs.setdefault("pre_trained", False)
        kwargs.setdefault("backbone_weights", None)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the architecture beside the state dict, for :meth:`on_load_checkpoint`'s check."""
        super().on_save_checkpoint(checkpoint)
        checkpoint[CHECKPOINT_KEY] = {
            "format": CHECKPOINT_FORMAT,
            "backbone": self.hparams.get("backbone"),
            "layers": list(self.hparams.get("layers", ())),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check that ``checkpoint`` was written by a Pcsnet of this architecture and version.

        Runs before Lightning loads the state dict, so a wrong checkpoint fails here with a
        message instead of a list of mismatched tensors.
        """
        saved = checkpoint.get(CHECKPOINT_KEY)
        if saved is None:
            msg = (
                "This checkpoint was not written by Pcsnet (it has no Pcsnet section; its hyper-parameters are "
                f"{sorted(checkpoint.get('hyper_parameters', {}))}): load it with the model class that trained it."
            )
            raise IncompatibleCheckpointError(msg)
        if saved.get("format") != CHECKPOINT_FORMAT:
            msg = (
                f"This checkpoint was written by pcsnet-anomalib 0.1 (checkpoint format {saved.get('format')}), whose "
                "Pcsnet also held k_shot, num_epochs and train_batch_size and kept its random states elsewhere; "
                "this version reads format 2 only: train again (README, 'Migrating from 0.1')."
            )
            raise IncompatibleCheckpointError(msg)
        self._check_state_dict_shapes(checkpoint.get("state_dict", {}), saved)
        super().on_load_checkpoint(checkpoint)

    def _check_state_dict_shapes(self, state_dict: dict[str, torch.Tensor], saved: dict[str, Any]) -> None:
        """Raise :class:`IncompatibleCheckpointError` naming the differences if the architectures differ."""
        problems = shape_differences(self.state_dict(), state_dict, _DYNAMIC_BUFFERS)
        if problems:
            msg = (
                f"The checkpoint was trained with backbone {saved.get('backbone')!r}, layers {saved.get('layers')}, "
                f"but this Pcsnet has backbone {self.hparams.get('backbone')!r}, layers "
                f"{list(self.hparams.get('layers', ()))} and other settings; {len(problems)} tensors differ "
                f"(first: {'; '.join(problems[:3])}). Build the model with the checkpoint's settings, "
                "e.g. Pcsnet.load_from_checkpoint(path)."
            )
            raise IncompatibleCheckpointError(msg)

    def setup(self, stage: str) -> None:
        """Check the stage's image files; when fitting, refuse abnormal training images and resolve the preset."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        check_datamodule_files(datamodule, stage)
        check_normal_training_set(datamodule, stage, type(self).__name__)
        synthesizer = self.model.synthesizer
        if stage == "fit" and synthesizer.config is None:
            preset_name = preset_for_datamodule(datamodule) or DEFAULT_PRESET
            synthesizer.use_preset(preset_name)
            if synthesizer.config.rotation_sensitive and self.model.descriptor.reducers is None:
                logger.warning(
                    "Preset %s is rotation-sensitive in the paper; pass rotation_sensitive=True for its descriptor.",
                    preset_name,
                )

    def on_train_start(self) -> None:
        """Build the prototypes from the training images (not again when resuming)."""
        logger.info("Pcsnet: pseudo-anomaly preset %s.", self.model.synthesizer.preset_name)
        if not self.model.memory.is_initialized:
            self._initialize_prototypes()

    @torch.no_grad()
    def _initialize_prototypes(self) -> None:
        """Prototypes = per-position mean descriptor of all training images (summed over ranks)."""
        descriptor_sum: torch.Tensor | None = None
        count = 0
        for batch in self.trainer.train_dataloader:
            images = batch.image.to(self.device)
            if self.pre_processor is not None and self.pre_processor.transform is not None:
                images = self.pre_processor.transform(images)
            descriptor = self.model.describe(images).sum(dim=0)
            descriptor_sum = descriptor if descriptor_sum is None else descriptor_sum + descriptor
            count += images.shape[0]
        if descriptor_sum is None:
            msg = "The training set is empty: no images to build prototypes from."
            raise ValueError(msg)
        descriptor_sum = self.trainer.strategy.reduce(descriptor_sum, reduce_op="sum")
        total = self.trainer.strategy.reduce(torch.tensor(float(count), device=self.device), reduce_op="sum")
        self.model.initialize_prototypes(descriptor_sum, int(total.item()))

    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """One step on the normal images, their pseudo-anomalous copies and a mix of both."""
        del args, kwargs
        outputs = self.model(batch.image)
        assert isinstance(outputs, PcsnetTrainingOutput)  # the torch model is in training mode
        losses = self.loss(outputs, self.model.radius, outputs.anomaly_mask, outputs.mixed_is_anomalous)
        loss = losses["loss"]
        check_finite_loss(losses, self.current_epoch, self.global_step)
        batch_size = batch.image.shape[0]
        self.log("train_loss", loss, prog_bar=True, batch_size=batch_size)
        self.log_dict(
            {f"train_{name}": value for name, value in losses.items() if name != "loss"}, batch_size=batch_size
        )
        return {"loss": loss}

    def on_train_epoch_start(self) -> None:
        """Remember the synthesis counters, to log this epoch's fallback rate at its end."""
        synthesizer = self.model.synthesizer
        self._epoch_start_patches = (synthesizer.failed_patches, synthesizer.total_patches)

    def on_train_epoch_end(self) -> None:
        """Log the fraction of this epoch's pseudo-anomaly patches that could not be placed (image left normal)."""
        synthesizer = self.model.synthesizer
        failed = synthesizer.failed_patches - self._epoch_start_patches[0]
        total = synthesizer.total_patches - self._epoch_start_patches[1]
        if total > 0:
            self.log("train_synthesis_fallback_rate", failed / total, on_epoch=True)
            if failed:
                logger.info("Pcsnet: %d of %d pseudo-anomaly patches could not be placed this epoch.", failed, total)

    def validation_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Predict anomaly maps and scores for validation images."""
        del args, kwargs
        predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam with amsgrad: PFA (descriptor and radius) at ``pfa_lr``, CAS at ``cas_lr``."""
        pfa_parameters = [*self.model.descriptor.parameters(), self.model.radius]
        return torch.optim.Adam(
            [
                {"params": pfa_parameters, "lr": self.pfa_lr},
                {"params": self.model.cas.parameters(), "lr": self.cas_lr},
            ],
            weight_decay=self.weight_decay,
            amsgrad=True,
        )

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No gradient clipping and no sanity validation (prototypes do not exist before training)."""
        return {"gradient_clip_val": 0, "num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """ONE_CLASS: PCSNet trains (anomalib's Engine skips fitting FEW_SHOT models)."""
        return LearningType.ONE_CLASS
