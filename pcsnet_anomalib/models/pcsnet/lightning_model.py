"""PCSNet as an anomalib model: few-shot training with pseudo-anomalies, anomalib inference.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from pcsnet_anomalib import Pcsnet
    >>> engine = Engine()  # doctest: +SKIP
    >>> engine.train(Pcsnet(k_shot=8), datamodule=MVTecAD(category="bottle"))  # doctest: +SKIP
"""

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch import Callback
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torchvision.transforms.v2 import CenterCrop, Compose, Resize

from pcsnet_anomalib.callbacks import KShotSelection, PredictionWriter, ResumableTrainLoader
from pcsnet_anomalib.data.validation import check_datamodule_files
from pcsnet_anomalib.synthesis import PatchExchange, load_preset, preset_for_datamodule

from .loss import PcsnetLoss
from .torch_model import PcsnetModel

logger = logging.getLogger(__name__)

DEFAULT_PRESET = "default"
# What Pcsnet adds to a Lightning checkpoint, beside the weights, prototypes and radius of the state dict.
CHECKPOINT_KEY = "pcsnet"
CHECKPOINT_FORMAT = 1
_DYNAMIC_BUFFERS = ("model.memory.",)  # sized at training time; their shapes come from the checkpoint


class NonFiniteLossError(RuntimeError):
    """Raised when a training loss is NaN or infinite, before a broken checkpoint can be written."""


class IncompatibleCheckpointError(ValueError):
    """Raised when a checkpoint was not written by Pcsnet or by a Pcsnet of another architecture."""


class Pcsnet(AnomalibModule):
    """PCSNet: prototypical feature adaptation + context-aware segmentation, trained few-shot.

    Args:
        backbone: timm backbone; the default is the paper's (torchvision ImageNet WideResNet-50-2).
        layers: backbone levels (strides 4, 8, 16).
        pre_trained: load pretrained backbone weights through timm (needs the hub or its cache).
        backbone_weights: local weights file for the backbone (or ``"package:efficientnet_lite0"``);
            loads offline and takes precedence over ``pre_trained``.
        k_shot: normal training images to keep (the paper: 2, 4, 8); ``None`` keeps all.
        seed: seeds the k-shot choice, the pseudo-anomalies and the mixing of the batch.
        num_epochs: training epochs (50 in the paper); training also stops at ``trainer.max_epochs``.
        train_batch_size: batch size set on the datamodule when fitting (2 in the paper); ``None``
            keeps the datamodule's.
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
        k_shot: int | None = 8,
        seed: int = 0,
        num_epochs: int = 50,
        train_batch_size: int | None = 2,
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
        if num_epochs < 1:
            msg = f"num_epochs must be at least 1, got {num_epochs}."
            raise ValueError(msg)
        if train_batch_size is not None and train_batch_size < 1:
            msg = f"train_batch_size must be at least 1 or None, got {train_batch_size}."
            raise ValueError(msg)
        self.k_shot_selection = KShotSelection(k_shot=k_shot, seed=seed)
        preset = load_preset(synthesis_preset) if synthesis_preset is not None else None
        if rotation_sensitive is None:
            rotation_sensitive = preset.rotation_sensitive if preset is not None else False
        self.synthesis_preset = synthesis_preset
        self.synthesizer = PatchExchange(preset, seed=seed) if preset is not None else None
        self.seed = seed
        self.num_epochs = num_epochs
        self.train_batch_size = train_batch_size
        self.pfa_lr = pfa_lr
        self.cas_lr = cas_lr
        self.weight_decay = weight_decay
        with _seeded_torch(seed):  # the initial weights depend on ``seed`` only, not on the global RNG
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
            )
        self.loss = PcsnetLoss(
            nu=nu,
            alpha=alpha,
            pdc_top_k=pdc_top_k,
            official_anomalous_term=official_anomalous_term,
        )
        self._mixing_rng = np.random.default_rng(seed)
        self._resumed_synthesis_state: dict[str, Any] | None = None
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

    def configure_callbacks(self) -> Sequence[Callback]:
        """anomalib's component callbacks plus the k-shot selection, a resumable training loader, prediction files."""
        callbacks = super().configure_callbacks()
        callbacks = list(callbacks) if isinstance(callbacks, Sequence) else [callbacks]
        return [*callbacks, self.k_shot_selection, ResumableTrainLoader(seed=self.seed), PredictionWriter()]

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> "Pcsnet":
        """Load a trained model; the backbone's weights come from the checkpoint, so nothing is downloaded.

        Arguments given in ``kwargs`` override the saved hyper-parameters as in Lightning.
        """
        kwargs.setdefault("pre_trained", False)
        kwargs.setdefault("backbone_weights", None)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the pseudo-anomaly preset, the k-shot choice and the random states beside the weights.

        The random states (batch mixing, synthesis, torch) let a resumed fit continue the same streams.
        """
        super().on_save_checkpoint(checkpoint)
        checkpoint[CHECKPOINT_KEY] = {
            "format": CHECKPOINT_FORMAT,
            "backbone": self.hparams.get("backbone"),
            "layers": list(self.hparams.get("layers", ())),
            "synthesis_preset": self.synthesis_preset,
            "k_shot": self.k_shot_selection.state_dict(),
            "random_state": self._random_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check that ``checkpoint`` fits this model, then restore the preset and the k-shot choice.

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
        self._check_state_dict_shapes(checkpoint.get("state_dict", {}), saved)
        super().on_load_checkpoint(checkpoint)
        preset_name = saved.get("synthesis_preset")
        if preset_name is not None and preset_name != self.synthesis_preset:
            self.synthesis_preset = preset_name
            self.synthesizer = PatchExchange(load_preset(preset_name), seed=self.seed)
        self.k_shot_selection.load_state_dict(saved.get("k_shot", {}))
        self._load_random_state(saved["random_state"])  # after the preset: it may rebuild the synthesizer

    def _check_state_dict_shapes(self, state_dict: dict[str, torch.Tensor], saved: dict[str, Any]) -> None:
        """Raise :class:`IncompatibleCheckpointError` naming the differences if the architectures differ."""
        expected, found = _architecture_shapes(self.state_dict()), _architecture_shapes(state_dict)
        problems = [f"missing {name}" for name in expected.keys() - found.keys()]
        problems += [f"unexpected {name}" for name in found.keys() - expected.keys()]
        problems += [
            f"{name}: checkpoint {found[name]}, model {shape}"
            for name, shape in expected.items()
            if name in found and found[name] != shape
        ]
        if problems:
            msg = (
                f"The checkpoint was trained with backbone {saved.get('backbone')!r}, layers {saved.get('layers')}, "
                f"but this Pcsnet has backbone {self.hparams.get('backbone')!r}, layers "
                f"{list(self.hparams.get('layers', ()))} and other settings; {len(problems)} tensors differ "
                f"(first: {'; '.join(sorted(problems)[:3])}). Build the model with the checkpoint's settings, "
                "e.g. Pcsnet.load_from_checkpoint(path)."
            )
            raise IncompatibleCheckpointError(msg)

    def setup(self, stage: str) -> None:
        """Check the image files, seed torch's RNG for fitting, and use the paper's batch size for training."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        check_datamodule_files(datamodule, stage)
        if stage == "fit":
            torch.manual_seed(self.seed)  # dropout and loader workers; a resumed run restores its saved state
        wanted = self.train_batch_size
        if stage == "fit" and wanted is not None and getattr(datamodule, "train_batch_size", wanted) != wanted:
            logger.info("Pcsnet: training batch size set to %d (train_batch_size).", wanted)
            datamodule.train_batch_size = wanted

    def on_train_start(self) -> None:
        """Pick the pseudo-anomaly preset and build the prototypes from the k training images."""
        if self.synthesizer is None:
            preset_name = preset_for_datamodule(self.trainer.datamodule) or DEFAULT_PRESET
            preset = load_preset(preset_name)
            if preset.rotation_sensitive and self.model.descriptor.reducers is None:
                logger.warning(
                    "Preset %s is rotation-sensitive in the paper; pass rotation_sensitive=True for its descriptor.",
                    preset_name,
                )
            self.synthesis_preset = preset_name
            self.synthesizer = PatchExchange(preset, seed=self.seed)
        self._restore_synthesis_state()
        logger.info("Pcsnet: pseudo-anomaly preset %s.", self.synthesis_preset)
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
        images = batch.image
        assert self.synthesizer is not None  # set in on_train_start
        anomalous, anomaly_mask = self.synthesizer(images)
        batch_size = images.shape[0]
        mixed_is_anomalous = torch.zeros(batch_size, dtype=torch.bool, device=images.device)
        chosen = self._mixing_rng.choice(batch_size, size=(batch_size + 1) // 2, replace=False)
        mixed_is_anomalous[torch.as_tensor(chosen, device=images.device)] = True
        outputs = self.model.training_outputs(
            images,
            anomalous,
            mixed_is_anomalous,
            keep_anomalous_distances=self.loss.official_anomalous_term,
        )
        losses = self.loss(outputs, self.model.radius, anomaly_mask, mixed_is_anomalous)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            terms = {name: float(value) for name, value in losses.items()}
            msg = f"Non-finite training loss at epoch {self.current_epoch}, step {self.global_step}: {terms}."
            raise NonFiniteLossError(msg)
        self.log("train_loss", loss, prog_bar=True, batch_size=batch_size)
        self.log_dict(
            {f"train_{name}": value for name, value in losses.items() if name != "loss"}, batch_size=batch_size
        )
        return {"loss": loss}

    def on_train_epoch_start(self) -> None:
        """Remember the synthesis counters, to log this epoch's fallback rate at its end."""
        if self.synthesizer is not None:
            self._epoch_start_patches = (self.synthesizer.failed_patches, self.synthesizer.total_patches)

    def on_train_epoch_end(self) -> None:
        """Log the synthesis fallback rate; stop after ``num_epochs``."""
        self._log_synthesis_fallbacks()
        if self.current_epoch + 1 >= self.num_epochs:
            self.trainer.should_stop = True

    def _log_synthesis_fallbacks(self) -> None:
        """Log the fraction of this epoch's pseudo-anomaly patches that could not be placed (image left normal)."""
        if self.synthesizer is None:
            return
        failed = self.synthesizer.failed_patches - self._epoch_start_patches[0]
        total = self.synthesizer.total_patches - self._epoch_start_patches[1]
        if total > 0:
            self.log("train_synthesis_fallback_rate", failed / total, on_epoch=True)
            if failed:
                logger.info("Pcsnet: %d of %d pseudo-anomaly patches could not be placed this epoch.", failed, total)

    def _random_state(self) -> dict[str, Any]:
        """Random streams of training: batch mixing, synthesis (with its counters) and torch."""
        synthesis = None
        if self.synthesizer is not None:
            synthesis = {
                "rng": self.synthesizer.rng.bit_generator.state,
                "failed_patches": self.synthesizer.failed_patches,
                "total_patches": self.synthesizer.total_patches,
            }
        return {
            "mixing": self._mixing_rng.bit_generator.state,
            "synthesis": synthesis,
            "torch": torch.get_rng_state(),
        }

    def _load_random_state(self, state: dict[str, Any]) -> None:
        """Restore the states of :meth:`_random_state` (torch's only when resuming a fit)."""
        self._mixing_rng.bit_generator.state = state["mixing"]
        self._resumed_synthesis_state = state["synthesis"]
        if self.synthesizer is not None:
            self._restore_synthesis_state()
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        if fitting:
            torch.set_rng_state(state["torch"])

    def _restore_synthesis_state(self) -> None:
        """Apply a synthesis state loaded from a checkpoint (the synthesizer may be built after loading)."""
        state, self._resumed_synthesis_state = self._resumed_synthesis_state, None
        if state is None or self.synthesizer is None:
            return
        self.synthesizer.rng.bit_generator.state = state["rng"]
        self.synthesizer.failed_patches = state["failed_patches"]
        self.synthesizer.total_patches = state["total_patches"]

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


def _architecture_shapes(state_dict: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Shapes of the torch model's tensors that the architecture fixes (not the training-sized prototypes)."""
    return {
        name: tuple(tensor.shape)
        for name, tensor in state_dict.items()
        if name.startswith("model.") and not name.startswith(_DYNAMIC_BUFFERS)
    }


@contextmanager
def _seeded_torch(seed: int) -> Iterator[None]:
    """Run a block with torch's global RNG seeded by ``seed``, leaving the caller's RNG state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
