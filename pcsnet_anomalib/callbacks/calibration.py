"""Decision thresholds without defect images: calibrate on held-out normal images and their pseudo-anomalies.

anomalib fits a model's image and pixel thresholds (``F1AdaptiveThreshold`` in its ``PostProcessor``) on a
validation set that must hold real anomalies; without them the threshold falls back to the highest normal
validation score, and a k-shot user has no spare normal images for validation at all.
:class:`ThresholdCalibration` sets both thresholds from what such a user has, the k training images:

1. **Cross-fitting.** The training images are split into ``folds`` seeded folds (leave-one-out when there are
   fewer images than folds). For each fold, a copy of the model as it was before training is fitted on the other
   folds with the same datamodule settings (models trained by gradient steps for as many steps as the main fit, so
   that their scores are on its scale; memory-bank models in one pass) and scores the fold's images, which it never
   saw. A model scoring its own training images scores them too low (a memory bank holds them exactly), so
   held-out scores are the honest normal scores there are. Every model is re-fitted whole: this works for any
   anomalib model and costs ``folds`` extra fits. The price: each fold model saw fewer images than the final
   model (at k = 2 a fold model has one image), and a model trained by gradient steps lands at a different score
   level in every training run (Pcsnet's held-out normal images scored 0.10-0.22 under fold models, its unseen
   ones 0.20-0.29 under the final model, on the demo's brick at k = 8). ``anchor`` (on except for anomalib's
   memory-bank models) therefore measures each fold model's scores from the median score of its own training images and
   places them on the final model's median training score. That corrects the level, not the generalisation gap:
   at k = 2 a fold model has one image, and Pcsnet's one-image models scored the other good image 2-20 times
   higher than the final model scored new good images on the demo textures, so the threshold rejected nothing
   (``benchmarks/results/thresholds/summary.md``); the callback warns when a fold model of a model trained by
   gradient steps would have a single image.
2. **Pseudo-anomalies.** ``anomalies_per_image`` pseudo-anomalous copies of each held-out image per generator,
   scored by the same fold model, with exact masks: anomalib's ``PerlinAnomalyGenerator`` (``"perlin"``, the
   default), PCSNet's patch exchange with the category's preset (``"patch_exchange"``; ``preset_for_datamodule``,
   ``default`` when the datamodule has none), or both. Patch exchange moves a piece of the image within itself:
   on textures it is nearly invisible to a one-class model, by design (it is PCSNet's training signal), so its
   scores overlap the normal ones; the default was chosen on the demo data's validation half
   (``benchmarks/results/thresholds/``).
3. **Operating point.** The image threshold maximises image F1 on these scores with the two classes weighed
   equally (``operating_point="f1"``; the calibration set's class ratio is an artefact of
   ``anomalies_per_image``, not the line's defect rate), or is the lowest that rejects at most
   ``false_rejection_rate`` of the held-out normal images (``"false_rejection_rate"``, how inspection lines are
   usually specified; with n held-out images the achievable rates are multiples of 1/n). The pixel threshold
   maximises pixel F1 on the pseudo-anomalies' masks in both cases.

The thresholds and the score ranges of the calibration set are written into the model's ``PostProcessor``, where
anomalib keeps its own: they travel in checkpoints and exports (torch, ONNX, OpenVINO), and ``pred_label`` /
``pred_mask`` of test and predict use them. Calibration runs when the fit ends; the checkpoints that fit wrote
are saved again so that they hold the calibrated thresholds. A later validation with this callback attached
keeps them. What was used (held-out images, pseudo-anomaly counts and scores, thresholds, rates on the
calibration set) is logged and saved with the callback's state in checkpoints (:class:`CalibrationReport`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from enum import Enum
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data.utils.generators import PerlinAnomalyGenerator
from anomalib.models.components import MemoryBankMixin
from anomalib.post_processing import PostProcessor
from lightning.pytorch import Callback, LightningModule, Trainer
from torchvision import tv_tensors

from pcsnet_anomalib.data.kshot import restrict_to
from pcsnet_anomalib.models.pcsnet.synthesis import PatchExchange
from pcsnet_anomalib.models.pcsnet.synthesis_presets import DEFAULT_PRESET, preset_for_datamodule

logger = logging.getLogger(__name__)

_SCORING_BATCH = 8  # images scored per forward pass


class OperatingPoint(str, Enum):
    """How the image threshold is chosen on the calibration set."""

    F1 = "f1"
    FALSE_REJECTION_RATE = "false_rejection_rate"


class PseudoAnomalies(str, Enum):
    """Which generators make the calibration set's pseudo-anomalies."""

    PATCH_EXCHANGE = "patch_exchange"  # PCSNet's patch exchange with the category's preset
    PERLIN = "perlin"  # anomalib's PerlinAnomalyGenerator (DRAEM's, and anomalib's synthetic validation's)
    BOTH = "both"  # anomalies_per_image of each

    @property
    def kinds(self) -> list[str]:
        """The generators used, in synthesis order."""
        both = [PseudoAnomalies.PATCH_EXCHANGE.value, PseudoAnomalies.PERLIN.value]
        return both if self is PseudoAnomalies.BOTH else [self.value]


@dataclasses.dataclass(frozen=True)
class CalibrationReport:
    """What a calibration used and found; thresholds and scores in the model's raw score units.

    ``normal_images`` are the held-out training images (each scored by a fold model that did not fit on it);
    ``pseudo_anomalies`` counts the synthesised images that were scored (``failed_pseudo_anomalies`` changed no
    pixel and were dropped); ``false_rejection_rate``, ``miss_rate`` and ``image_f1`` (unweighted) are those of
    ``image_threshold`` on this calibration set; ``anomaly_kinds`` names the generator of each anomaly score.
    The scores are the fold models' plus, when ``anchored``, the anchoring ``*_shifts`` (recorded either way).
    """

    operating_point: str
    preset: str
    folds: int
    normal_images: list[str]
    pseudo_anomalies: int
    failed_pseudo_anomalies: int
    image_threshold: float
    pixel_threshold: float
    false_rejection_rate: float
    miss_rate: float
    image_f1: float
    normal_scores: list[float]
    anomaly_scores: list[float]
    anomaly_kinds: list[str]
    anchored: bool
    normal_shifts: list[float]
    anomaly_shifts: list[float]


def _check_scores(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scores, labels = scores.detach().flatten().float().cpu(), labels.detach().flatten().bool().cpu()
    if scores.numel() != labels.numel():
        msg = f"scores and labels differ in size: {scores.numel()} vs {labels.numel()}."
        raise ValueError(msg)
    if not bool(torch.isfinite(scores).all()):
        msg = "scores hold NaN or infinite values: the model's outputs cannot be thresholded."
        raise ValueError(msg)
    return scores, labels


def _cut_below(higher: float, lower: float) -> float:
    """A float32 value t with lower <= t < higher, midway when float32 allows.

    Thresholds live in float32 buffers and are compared with float32 scores, so the midpoint is rounded to float32
    before it is checked: ``score > t`` then keeps ``higher`` and drops ``lower`` exactly as computed here.
    """
    middle = float(torch.tensor((higher + lower) / 2, dtype=torch.float32))
    return middle if lower <= middle < higher else lower


def f1_optimal_threshold(scores: torch.Tensor, labels: torch.Tensor, balanced: bool = False) -> float:
    """Threshold t maximising F1 of ``score > t`` for the positive (anomalous, label 1) class.

    t lies midway between the lowest score called anomalous and the next lower score (anomalib's
    ``F1AdaptiveThreshold`` returns a score itself, which its ``score > t`` rule then calls normal), so it sits in
    the middle of the gap when the classes separate. Ties in F1 go to the highest threshold. ``balanced`` weighs
    each anomalous score by (normal count / anomalous count): F1 as if both classes were equally frequent.

    Raises:
        ValueError: no anomalous or no normal score, sizes differ, or a score is not finite.
    """
    scores, labels = _check_scores(scores, labels)
    positives = int(labels.sum())
    if positives == 0 or positives == labels.numel():
        msg = f"F1 needs normal and anomalous scores; got {positives} anomalous of {labels.numel()}."
        raise ValueError(msg)
    order = torch.argsort(scores, descending=True, stable=True)
    sorted_scores, sorted_labels = scores[order], labels[order].double()
    weight = (labels.numel() - positives) / positives if balanced else 1.0
    true_positives = (sorted_labels * weight).cumsum(0)
    false_positives = (1 - sorted_labels).cumsum(0)
    f1 = 2 * true_positives / (true_positives + false_positives + positives * weight)
    cut_possible = torch.ones_like(f1, dtype=torch.bool)
    cut_possible[:-1] = sorted_scores[:-1] > sorted_scores[1:]  # no cut inside a run of equal scores
    f1[~cut_possible] = -1.0
    best = int(torch.argmax(f1))  # first maximum = fewest images called anomalous = highest threshold
    lowest_called = float(sorted_scores[best])
    if best + 1 == scores.numel():
        return float(torch.nextafter(sorted_scores[best], torch.tensor(-math.inf)))
    return _cut_below(lowest_called, float(sorted_scores[best + 1]))


def _check_rate(rate: float) -> None:
    if not 0.0 <= rate < 1.0:
        msg = f"false_rejection_rate must be in [0, 1), got {rate}."
        raise ValueError(msg)


def false_rejection_threshold(normal_scores: torch.Tensor, rate: float) -> float:
    """Lowest threshold t such that at most ``rate`` of ``normal_scores`` satisfy ``score > t``.

    With n normal scores the achievable rates are multiples of 1/n: below 1/n, t is the highest normal score.

    Raises:
        ValueError: ``rate`` outside [0, 1), no scores, or a score is not finite.
    """
    _check_rate(rate)
    scores, _ = _check_scores(normal_scores, torch.zeros_like(normal_scores))
    if scores.numel() == 0:
        msg = "No normal scores to set a false-rejection rate on."
        raise ValueError(msg)
    allowed = math.floor(rate * scores.numel() + 1e-9)
    return float(torch.sort(scores, descending=True).values[allowed])


@torch.no_grad()
def raw_predictions(
    module: LightningModule,
    images: torch.Tensor,
    masks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Image scores (N,), anomaly maps (N, H, W) and masks at the maps' size, before any post-processing.

    ``images`` (N, C, H, W) in [0, 1] as the dataset gives them; ``masks`` (N, H, W) go through the same geometric
    transforms as the images (the model's pre-processor: resize, crop), as in anomalib's test loop. The model runs in
    evaluation mode and returns to its former mode.
    """
    was_training = module.training
    module.eval()
    transform = module.pre_processor.transform if module.pre_processor is not None else None
    scores, maps, resized_masks = [], [], []
    for start in range(0, images.shape[0], _SCORING_BATCH):
        batch = images[start : start + _SCORING_BATCH].to(module.device)
        batch_masks = None if masks is None else tv_tensors.Mask(masks[start : start + _SCORING_BATCH].to(batch.device))
        if transform is not None:
            batch, batch_masks = transform(batch, batch_masks)
        output = module.model(batch)
        anomaly_map = output.anomaly_map.reshape(batch.shape[0], *output.anomaly_map.shape[-2:]).float()
        pred_score = output.pred_score
        scores.append((anomaly_map.amax(dim=(-2, -1)) if pred_score is None else pred_score.reshape(-1)).cpu())
        maps.append(anomaly_map.cpu())
        if batch_masks is not None:
            batch_masks = torch.as_tensor(batch_masks).float().reshape(batch.shape[0], 1, *batch_masks.shape[-2:])
            resized = F.interpolate(batch_masks, size=anomaly_map.shape[-2:], mode="nearest")[:, 0]
            resized_masks.append(resized.cpu() > 0.5)
    module.train(was_training)
    return torch.cat(scores).float(), torch.cat(maps), torch.cat(resized_masks) if masks is not None else None


_Choice = TypeVar("_Choice", OperatingPoint, PseudoAnomalies)


def _choice(options: type[_Choice], value: _Choice | str, name: str) -> _Choice:
    """``value`` as a member of ``options``; a ValueError listing the valid names otherwise."""
    try:
        return options(value)
    except ValueError:
        choices = ", ".join(repr(option.value) for option in options)
        msg = f"{name} must be one of {choices}, got {value!r}."
        raise ValueError(msg) from None


def _images(dataset: Any) -> torch.Tensor:
    """Every image of an anomalib dataset, stacked (N, C, H, W) as the dataset gives them."""
    return torch.stack([dataset[index].image for index in range(len(dataset))]).float()


def _rows(paths: list[str], chosen: list[str]) -> list[int]:
    """Positions in ``paths`` of the ``chosen`` paths, in the order of ``paths`` (as ``restrict_to`` keeps them)."""
    wanted = set(chosen)
    return [row for row, path in enumerate(paths) if path in wanted]


class ThresholdCalibration(Callback):
    """Set a model's image and pixel thresholds from its pseudo-anomalies, without any real anomalous image.

    Args:
        operating_point: ``"f1"`` (maximise image F1 on the calibration set) or ``"false_rejection_rate"``
            (reject at most ``false_rejection_rate`` of the held-out normal images).
        false_rejection_rate: the target rate of the ``"false_rejection_rate"`` operating point.
        folds: cross-fitting folds over the training images (leave-one-out when there are fewer images).
        anomalies_per_image: pseudo-anomalies synthesised from each held-out image (per generator).
        pseudo_anomalies: ``"perlin"`` (anomalib's ``PerlinAnomalyGenerator``), ``"patch_exchange"`` (PCSNet's, with
            ``preset``) or ``"both"``.
        anchor: express each fold model's scores relative to the median score of its own training images, on the
            final model's median training score (image and pixel level alike), so that a model whose score level
            moves from one training run to another (Pcsnet's) keeps the threshold's place between its normal and
            anomalous scores. ``None``: anchor models trained by gradient steps, not anomalib's memory-bank models
            (``MemoryBankMixin``: their scores are distances in fixed features; anchoring on their near-zero
            training scores hurt Patchcore on the demo's validation half).
        preset: patch-exchange preset name; ``None`` takes the datamodule's (``"<dataset>/<category>"``) or
            ``"default"``.
        seed: seeds the fold assignment and the pseudo-anomalies.

    Example:
        >>> from anomalib.engine import Engine
        >>> engine = Engine(callbacks=[ThresholdCalibration()])  # doctest: +SKIP
        >>> engine.train(Pcsnet(), datamodule=KShotMVTecAD(category="bottle", k_shot=8))  # doctest: +SKIP
    """

    def __init__(
        self,
        operating_point: OperatingPoint | str = OperatingPoint.F1,
        false_rejection_rate: float = 0.01,
        folds: int = 4,
        anomalies_per_image: int = 4,
        pseudo_anomalies: PseudoAnomalies | str = PseudoAnomalies.PERLIN,
        anchor: bool | None = None,
        preset: str | None = None,
        seed: int = 0,
    ) -> None:
        self.operating_point = _choice(OperatingPoint, operating_point, "operating_point")
        _check_rate(false_rejection_rate)
        if folds < 2:
            msg = f"folds must be at least 2 (one fold is held out, the others fit), got {folds}."
            raise ValueError(msg)
        if anomalies_per_image < 1:
            msg = f"anomalies_per_image must be at least 1, got {anomalies_per_image}."
            raise ValueError(msg)
        self.pseudo_anomalies = _choice(PseudoAnomalies, pseudo_anomalies, "pseudo_anomalies")
        self.false_rejection_rate = false_rejection_rate
        self.folds = folds
        self.anomalies_per_image = anomalies_per_image
        self.anchor = anchor
        self.preset = preset
        self.seed = seed
        self.report: CalibrationReport | None = None
        self._ranges: dict[str, float] | None = None
        self._untrained: LightningModule | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Before fitting: check the model can take thresholds and keep a copy of it as it is, untrained."""
        if stage != "fit":
            return
        if not isinstance(getattr(pl_module, "post_processor", None), PostProcessor):
            msg = (
                f"ThresholdCalibration writes anomalib's PostProcessor thresholds, but {type(pl_module).__name__} has "
                f"post_processor={type(getattr(pl_module, 'post_processor', None)).__name__}: keep the model's "
                "default post-processor."
            )
            raise TypeError(msg)
        # The copy must not drag the trainer (and its datamodule, loggers) along.
        self._untrained = copy.deepcopy(pl_module, memo={id(trainer): None})

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Refuse fewer than two training images; warn when a gradient-trained fold model would have only one.

        One-image fold models score held-out images high (the module docstring, step 1), so the threshold runs high.
        """
        paths = self._training_paths(trainer)
        if len(paths) < 2:
            msg = (
                f"ThresholdCalibration holds training images out, but the training set has {len(paths)} image(s): "
                "train on at least 2 normal images (k_shot >= 2)."
            )
            raise ValueError(msg)
        largest_fold = max(len(fold) for fold in self._fold_assignment(paths))
        if len(paths) - largest_fold < 2 and not isinstance(pl_module, MemoryBankMixin):
            logger.warning(
                "ThresholdCalibration: with %d training images a fold model is fitted on one image; a model trained by "
                "gradient steps generalises from one image far worse than the final model does from %d, so the "
                "held-out scores run high and the threshold may reject nothing (Pcsnet at k = 2 on the demo data: "
                "benchmarks/README.md, 'Thresholds without defect images'). Train on more images, or check the "
                "calibrated threshold against the report's scores.",
                len(paths),
                len(paths),
            )

    @staticmethod
    def _training_paths(trainer: Trainer) -> list[str]:
        train_data = getattr(trainer.datamodule, "train_data", None)
        if train_data is None:
            msg = (
                "ThresholdCalibration needs a datamodule with a `train_data` AnomalibDataset (e.g. MVTecAD, Folder); "
                "pass `datamodule=` to Engine/Trainer.fit instead of bare dataloaders."
            )
            raise RuntimeError(msg)
        return sorted(train_data.samples.image_path.tolist())

    def _fold_assignment(self, paths: list[str]) -> list[list[str]]:
        order = np.random.default_rng(self.seed).permutation(len(paths))
        return [sorted(paths[i] for i in fold) for fold in np.array_split(order, min(self.folds, len(paths)))]

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Cross-fit, score held-out images and pseudo-anomalies, set the thresholds, re-save the checkpoints."""
        if self._untrained is None:
            msg = "ThresholdCalibration.setup did not run for this fit."
            raise RuntimeError(msg)
        datamodule = trainer.datamodule
        train_data = datamodule.train_data
        preset = self.preset or preset_for_datamodule(datamodule) or DEFAULT_PRESET
        synthesizer = PatchExchange(preset, seed=self.seed)
        # Models that learn by gradient steps get as many steps as the main fit (fewer images per epoch otherwise
        # mean less training and scores on another scale); anomalib's memory-bank models one pass, as in their fit.
        # (Lightning lists a placeholder optimiser for models without one, so `trainer.optimizers` cannot tell.)
        memory_bank = isinstance(pl_module, MemoryBankMixin)
        length = {"max_epochs": 1} if memory_bank else {"max_steps": trainer.global_step, "max_epochs": -1}
        image_scores, image_labels, pixel_scores, pixel_labels = [], [], [], []
        image_offsets, pixel_offsets = [], []
        held_out: list[str] = []
        anomaly_kinds: list[str] = []
        failed = 0
        folds = self._fold_assignment(self._training_paths(trainer))
        dataset_paths = train_data.samples.image_path.tolist()
        training_images = _images(train_data)  # read once; every fold takes its rows
        for fold_index, fold_paths in enumerate(folds):
            fit_paths = sorted(set(dataset_paths) - set(fold_paths))
            fold_model = self._fit_fold(trainer, datamodule, restrict_to(train_data, fit_paths), length)
            images = training_images[_rows(dataset_paths, fold_paths)]
            anomalous, masks, kinds = self._synthesize(images, synthesizer, fold_index)
            changed = masks.flatten(1).any(dim=1)
            failed += int((~changed).sum())
            all_images = torch.cat([images, anomalous[changed]])
            all_masks = torch.cat([torch.zeros(images.shape[0], *masks.shape[1:], dtype=torch.bool), masks[changed]])
            kinds = [kind for kind, kept in zip(kinds, changed.tolist(), strict=True) if kept]
            scores, maps, map_masks = raw_predictions(fold_model, all_images, all_masks.float())
            assert map_masks is not None
            fit_scores, fit_maps, _ = raw_predictions(fold_model, training_images[_rows(dataset_paths, fit_paths)])
            image_offsets.append(torch.full_like(scores, float(fit_scores.median())))
            pixel_offsets.append(torch.full_like(maps.flatten(), float(fit_maps.median())))
            image_scores.append(scores)
            image_labels.append(torch.arange(scores.numel()) >= images.shape[0])
            anomaly_kinds.extend(kinds)
            pixel_scores.append(maps.flatten())
            pixel_labels.append(map_masks.flatten())
            held_out.extend(fold_paths)
            logger.info("Threshold calibration: fold %d held out %s.", fold_index, ", ".join(fold_paths))
            del fold_model
        final_scores, final_maps, _ = raw_predictions(pl_module, training_images)
        final_image_offset, final_pixel_offset = float(final_scores.median()), float(final_maps.median())
        self._set_thresholds(
            pl_module,
            torch.cat(image_scores),
            torch.cat(image_labels),
            torch.cat(pixel_scores),
            torch.cat(pixel_labels),
            image_shift=final_image_offset - torch.cat(image_offsets),
            pixel_shift=final_pixel_offset - torch.cat(pixel_offsets),
            anchored=self.anchor if self.anchor is not None else not memory_bank,
            held_out=held_out,
            anomaly_kinds=anomaly_kinds,
            folds=len(folds),
            preset=preset,
            failed=failed,
        )
        self._untrained = None
        self._save_checkpoints_again(trainer)

    def _synthesize(
        self,
        images: torch.Tensor,
        patch_exchange: PatchExchange,
        fold_index: int,
    ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """``anomalies_per_image`` pseudo-anomalies of each image per generator: images, bool masks (N, H, W), kinds."""
        repeated = images.repeat_interleave(self.anomalies_per_image, dim=0)
        outputs, masks, kinds = [], [], []
        for kind in self.pseudo_anomalies.kinds:
            if kind == PseudoAnomalies.PATCH_EXCHANGE.value:
                anomalous, mask = patch_exchange(repeated)
            else:
                # anomalib's generator draws from torch's global generator: seed it, and leave the caller's alone.
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self.seed * 1_000_003 + fold_index)
                    anomalous, mask = PerlinAnomalyGenerator(probability=1.0)(repeated)
            outputs.append(anomalous)
            masks.append(mask.reshape(repeated.shape[0], *repeated.shape[-2:]) > 0)
            kinds.extend([kind] * repeated.shape[0])
        return torch.cat(outputs), torch.cat(masks), kinds

    def _fit_fold(self, trainer: Trainer, datamodule: Any, fit_data: Any, length: dict[str, int]) -> LightningModule:
        """A copy of the untrained model fitted on ``fit_data`` like the main fit (datamodule settings, ``length``)."""
        assert self._untrained is not None
        fold_model = copy.deepcopy(self._untrained)
        fold_datamodule = copy.copy(datamodule)  # same loader settings; its split is already made
        fold_datamodule.train_data = fit_data
        fold_trainer = Trainer(
            accelerator=trainer.accelerator,
            devices=1,
            precision=trainer.precision,
            **length,
            gradient_clip_val=trainer.gradient_clip_val,
            gradient_clip_algorithm=trainer.gradient_clip_algorithm,
            accumulate_grad_batches=trainer.accumulate_grad_batches,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=trainer.default_root_dir,
        )
        fold_trainer.fit(fold_model, datamodule=fold_datamodule)
        return fold_model

    def _set_thresholds(
        self,
        pl_module: LightningModule,
        image_scores: torch.Tensor,
        image_labels: torch.Tensor,
        pixel_scores: torch.Tensor,
        pixel_labels: torch.Tensor,
        image_shift: torch.Tensor,
        pixel_shift: torch.Tensor,
        anchored: bool,
        held_out: list[str],
        anomaly_kinds: list[str],
        folds: int,
        preset: str,
        failed: int,
    ) -> None:
        if anchored:
            image_scores, pixel_scores = image_scores + image_shift, pixel_scores + pixel_shift
        if not bool(image_labels.any()):
            msg = (
                f"Preset {preset!r} placed no pseudo-anomaly on the held-out images: choose a preset that fits the "
                "images (ThresholdCalibration(preset=...))."
            )
            raise RuntimeError(msg)
        normal_scores = image_scores[~image_labels]
        if self.operating_point is OperatingPoint.F1:
            image_threshold = f1_optimal_threshold(image_scores, image_labels, balanced=True)
        else:
            image_threshold = false_rejection_threshold(normal_scores, self.false_rejection_rate)
        pixel_threshold = f1_optimal_threshold(pixel_scores, pixel_labels)
        called = image_scores > image_threshold
        true_positives = int((called & image_labels).sum())
        self.report = CalibrationReport(
            operating_point=self.operating_point.value,
            preset=preset,
            folds=folds,
            normal_images=sorted(held_out),
            pseudo_anomalies=int(image_labels.sum()),
            failed_pseudo_anomalies=failed,
            image_threshold=image_threshold,
            pixel_threshold=pixel_threshold,
            false_rejection_rate=float(called[~image_labels].float().mean()),
            miss_rate=float((~called[image_labels]).float().mean()),
            image_f1=2 * true_positives / (int(called.sum()) + int(image_labels.sum())),
            normal_scores=normal_scores.tolist(),
            anomaly_scores=image_scores[image_labels].tolist(),
            anomaly_kinds=anomaly_kinds,
            anchored=anchored,
            normal_shifts=image_shift[~image_labels].tolist(),
            anomaly_shifts=image_shift[image_labels].tolist(),
        )
        self._ranges = {
            "image_min": float(image_scores.min()),
            "image_max": float(image_scores.max()),
            "pixel_min": float(pixel_scores.min()),
            "pixel_max": float(pixel_scores.max()),
        }
        self._apply(pl_module)
        logger.info(
            "Threshold calibration (%s, preset %s): %d held-out normal images, %d pseudo-anomalies (%d not placed); "
            "image threshold %.6g (calibration set: false rejection %.3f, miss %.3f, F1 %.3f), pixel threshold %.6g.",
            self.report.operating_point,
            preset,
            len(held_out),
            self.report.pseudo_anomalies,
            failed,
            image_threshold,
            self.report.false_rejection_rate,
            self.report.miss_rate,
            self.report.image_f1,
            pixel_threshold,
        )

    def _apply(self, pl_module: LightningModule) -> None:
        assert self.report is not None
        assert self._ranges is not None
        from pcsnet_anomalib._upstream import set_post_processor_thresholds  # lazy: see _upstream

        set_post_processor_thresholds(
            pl_module.post_processor,
            image_threshold=self.report.image_threshold,
            pixel_threshold=self.report.pixel_threshold,
            image_range=(self._ranges["image_min"], self._ranges["image_max"]),
            pixel_range=(self._ranges["pixel_min"], self._ranges["pixel_max"]),
        )

    @staticmethod
    def _save_checkpoints_again(trainer: Trainer) -> None:
        """Rewrite the checkpoints this fit saved, now with the calibrated thresholds."""
        for checkpoint_callback in trainer.checkpoint_callbacks:
            paths = {checkpoint_callback.last_model_path, checkpoint_callback.best_model_path}
            paths.update(getattr(checkpoint_callback, "best_k_models", {}))
            for path in sorted(path for path in paths if path):
                trainer.save_checkpoint(path)
                logger.info("Threshold calibration: saved the calibrated thresholds into %s.", path)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Keep the calibrated thresholds over those a later validation computed."""
        del trainer
        if self.report is not None:
            self._apply(pl_module)

    def state_dict(self) -> dict[str, Any]:
        """The calibration report (and score ranges), saved with the checkpoint."""
        return {
            "report": None if self.report is None else dataclasses.asdict(self.report),
            "ranges": self._ranges,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        report = state_dict.get("report")
        self.report = None if report is None else CalibrationReport(**report)
        self._ranges = state_dict.get("ranges")
