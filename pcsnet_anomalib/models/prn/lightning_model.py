"""PRN as an anomalib model: trains on normal images, the datamodule's few real anomalies and generated ones.

Example:
    >>> from anomalib.engine import Engine
    >>> from pcsnet_anomalib import KShotMVTecAD, Prn
    >>> datamodule = KShotMVTecAD(category="bottle", k_shot=None, anomalous_shots=10)  # doctest: +SKIP
    >>> Engine(max_epochs=100).train(Prn(), datamodule=datamodule)  # doctest: +SKIP

Which real anomalies train (m = 10 in the paper, out of test and validation) is the datamodule's choice
(``anomalous_shots``, :mod:`pcsnet_anomalib.data.anomalous_shots`); the model uses every training row labelled
abnormal, with its mask, and warns when there is none (it then learns from generated anomalies only).

Learning type: ``ONE_CLASS``. PRN is supervised with a few anomalies, but anomalib 2.7 has no supervised learning
type; ``ONE_CLASS`` is the type of every anomalib model that trains (``FEW_SHOT`` and ``ZERO_SHOT`` models are
not fitted by ``Engine.fit``), and it gives Prn anomalib's default post-processor. anomalib's SuperSimpleNet,
which also trains on labelled anomalies, reports ``ONE_CLASS`` for the same reason.
"""

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import AUPR, AUPRO, AUROC, Evaluator, F1Score
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import Compose, Resize

from pcsnet_anomalib.data.validation import check_datamodule_files
from pcsnet_anomalib.models.components import ArchitectureCheckpointMixin, check_finite_loss
from pcsnet_anomalib.models.pcsnet.synthesis_presets import load_preset, preset_for_datamodule

from .anomaly_generator import Kind, PrnAnomalyGenerator
from .loss import PrnLoss
from .torch_model import PrnModel, check_input_size

logger = logging.getLogger(__name__)

CHECKPOINT_KEY = "prn"
CHECKPOINT_FORMAT = 1
_FIT_BATCH_SIZE = 8  # images per backbone pass when fitting the prototypes


class Prn(ArchitectureCheckpointMixin, AnomalibModule):
    """PRN: prototypical residuals, multi-scale fusion and multi-size self-attention, trained with a few anomalies.

    Defaults follow ``PRN.md`` §12 (the unofficial code's values; the paper's are unknown): ResNet-18 with
    torchvision's weights, 256 x 256 inputs, K = 10 % of the normal training images as prototypes per level,
    3 MSA blocks per level, smooth-L1 + 5 x focal (gamma 4), Adam with learning rate 1e-4 and weight decay 1e-2,
    normal : seen : unseen = 2 : 1 : 1, image score = mean of the top 100 / 65,536 of the map.

    Args:
        backbone, layers, pre_trained, backbone_weights, input_size, msa_layers, share_fusion, topk_fraction:
            see :class:`PrnModel`.
        prototype_ratio: prototypes per level as a fraction of the normal training images (at least one).
        seed: seeds the initial weights, the k-means and the anomaly generator (each its own stream; the
            generator's state is saved in checkpoints); torch's global RNG is not used or changed.
        p_normal, p_seen, p_unseen, reuse_times, unseen_rotation_probability, anomaly_source_path,
            seen_in_foreground: see :class:`PrnAnomalyGenerator` (``anomaly_source_path``: a texture folder such as
            DTD, like DRAEM's).
        foreground_preset: the Pcsnet synthesis preset (``"<dataset>/<category>"``) whose ``background`` defines the
            object of the normal images for seen anomalies; ``None`` takes the datamodule's dataset and category
            when a preset exists (e.g. ``mvtec_ad/bottle``), else the whole image is foreground.
        learning_rate, weight_decay: Adam's (coupled weight decay, as U).
        focal_weight, focal_gamma, focal_alpha, l1_kind: see :class:`PrnLoss`.
        pre_processor, post_processor, evaluator, visualizer: anomalib components (``True`` = default; the default
            pre-processor resizes to ``input_size``).

    Raises:
        ValueError: ``input_size`` is not a multiple of 128, or another argument is out of range.
    """

    checkpoint_key = CHECKPOINT_KEY
    checkpoint_format = CHECKPOINT_FORMAT
    checkpoint_writer = "Prn"
    sized_at_training = ("model.prototypes.",)  # K prototypes per level, set by the training set's size

    def __init__(
        self,
        backbone: str = "resnet18.tv_in1k",
        layers: Sequence[str] = ("layer1", "layer2", "layer3", "layer4"),
        pre_trained: bool = True,
        backbone_weights: str | None = None,
        input_size: int = 256,
        msa_layers: int = 3,
        share_fusion: bool = False,
        topk_fraction: float = 100 / 65536,
        prototype_ratio: float = 0.1,
        seed: int = 0,
        p_normal: float = 0.5,
        p_seen: float = 0.25,
        p_unseen: float = 0.25,
        reuse_times: int = 5,
        unseen_rotation_probability: float = 0.3,
        anomaly_source_path: str | Path | None = None,
        seen_in_foreground: bool = True,
        foreground_preset: str | None = None,
        learning_rate: float = 1e-4,
        weight_decay: float = 1e-2,
        focal_weight: float = 5.0,
        focal_gamma: float = 4.0,
        focal_alpha: float = 0.5,
        l1_kind: str = "smooth_l1",
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        check_input_size(input_size)  # before the pre-processor is built for it
        if pre_processor is True:  # the default resizes to input_size, so Prn(input_size=S) needs nothing more
            pre_processor = self.configure_pre_processor((input_size, input_size))
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        if not 0.0 < prototype_ratio <= 1.0:
            msg = f"prototype_ratio must be in (0, 1], got {prototype_ratio}."
            raise ValueError(msg)
        self.prototype_ratio = prototype_ratio
        self.seed = seed
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.model = PrnModel(
            backbone=backbone,
            layers=layers,
            pre_trained=pre_trained,
            backbone_weights=backbone_weights,
            input_size=input_size,
            msa_layers=msa_layers,
            share_fusion=share_fusion,
            topk_fraction=topk_fraction,
            seed=seed,
        )
        self.anomaly_generator = PrnAnomalyGenerator(
            seed=seed,
            p_normal=p_normal,
            p_seen=p_seen,
            p_unseen=p_unseen,
            reuse_times=reuse_times,
            unseen_rotation_probability=unseen_rotation_probability,
            anomaly_source_path=anomaly_source_path,
            seen_in_foreground=seen_in_foreground,
        )
        self.foreground_preset = foreground_preset
        self.loss = PrnLoss(
            focal_weight=focal_weight, focal_gamma=focal_gamma, focal_alpha=focal_alpha, l1_kind=l1_kind
        )

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize to ``image_size`` (256 x 256); the model normalises, so anomalies are generated on [0, 1] images."""
        return PreProcessor(transform=Compose([Resize(image_size or (256, 256), antialias=True)]))

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """Test metrics: anomalib's defaults plus the paper's pixel AUPRO (FPR up to 0.3) and pixel AP (AUPR)."""
        return Evaluator(
            test_metrics=[
                AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
                F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
                AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
                F1Score(fields=["pred_mask", "gt_mask"], prefix="pixel_", strict=False),
                AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False, fpr_limit=0.3),
                AUPR(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
            ]
        )

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> "Prn":
        """Load a trained model; the backbone's weights come from the checkpoint, so nothing is downloaded."""
        kwargs.setdefault("pre_trained", False)
        kwargs.setdefault("backbone_weights", None)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def architecture(self) -> dict[str, Any]:
        """The settings that define the model's tensors, saved in checkpoints."""
        return {
            "model": type(self).__name__,
            "backbone": self.hparams.get("backbone"),
            "layers": list(self.hparams.get("layers", ())),
            "input_size": self.hparams.get("input_size"),
            "msa_layers": self.hparams.get("msa_layers"),
            "share_fusion": self.hparams.get("share_fusion"),
        }

    def architecture_differences(self, saved: Mapping[str, Any]) -> list[str]:
        """Shared fusion: one MSF block fewer, but its absence shows only as missing tensors; named here."""
        if bool(saved.get("share_fusion")) == bool(self.hparams.get("share_fusion")):
            return []
        return [
            f"share_fusion differs (checkpoint {saved.get('share_fusion')}, model {self.hparams.get('share_fusion')})"
        ]

    def _check_pre_processor(self) -> None:
        """Raise ``ValueError`` if the pre-processor does not produce the model's square input size."""
        transform = getattr(self.pre_processor, "transform", None)
        if transform is None:
            return
        side = self.model.input_size
        produced = tuple(transform(torch.zeros(1, 3, side + 7, side + 3)).shape[-2:])
        if produced != (side, side):
            msg = (
                f"The pre-processor makes {produced[0]} x {produced[1]} images, but this Prn was built for "
                f"{side} x {side} (input_size={side}): give the same square size to both, e.g. "
                f"Prn(input_size=S, pre_processor=Prn.configure_pre_processor((S, S))) with S a multiple of 128."
            )
            raise ValueError(msg)

    def setup(self, stage: str) -> None:
        """Check the pre-processor's output size and the stage's image files before any work is done."""
        self._check_pre_processor()
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        check_datamodule_files(datamodule, stage)

    def _preprocess(self, images: torch.Tensor) -> torch.Tensor:
        transform = getattr(self.pre_processor, "transform", None)
        return transform(images) if transform is not None else images

    def on_fit_start(self) -> None:
        """Fit the prototypes on the normal training images (not when resuming) and load the real anomalies."""
        train_data = getattr(getattr(self.trainer, "datamodule", None), "train_data", None)
        if train_data is None:
            msg = "Prn fits its prototypes on the datamodule's training set: train it with an anomalib datamodule."
            raise ValueError(msg)
        labels = train_data.samples.label_index.tolist()
        normal = [index for index, label in enumerate(labels) if label == 0]
        abnormal = [index for index, label in enumerate(labels) if label == 1]
        if not self.model.prototypes.is_fitted:
            self._fit_prototypes(train_data.subsample(normal))
        self._load_seen_bank(train_data, abnormal, len(normal))
        preset = self.foreground_preset or preset_for_datamodule(self.trainer.datamodule)
        self.anomaly_generator.set_background(load_preset(preset).background if preset else None)
        logger.info("Prn: seen anomalies' foreground from preset %s.", preset or "none (the whole image)")

    @torch.no_grad()
    def _fit_prototypes(self, normal_data: Any) -> None:
        """k-means of the normal images' backbone features, levels 1-3 (the labelled anomalies are left out)."""
        loader = DataLoader(normal_data, batch_size=_FIT_BATCH_SIZE, collate_fn=normal_data.collate_fn)
        batches = [self.model.backbone_features(self._preprocess(batch.image.to(self.device)))[:3] for batch in loader]
        levels = [torch.cat(level) for level in zip(*batches, strict=True)]
        self.model.fit_prototypes(levels, self.prototype_ratio, self.seed)
        logger.info(
            "Prn: %d prototypes per level from %d normal training images.",
            self.model.prototypes.memories[0].num_prototypes,
            len(normal_data),
        )

    def _load_seen_bank(self, train_data: Any, abnormal: list[int], num_normal: int) -> None:
        """Give the generator the training set's labelled anomalies (resized like the batches); warn if none."""
        if not abnormal:
            self.anomaly_generator.set_seen_bank(torch.empty(0, 3, 1, 1), torch.empty(0, 1, 1, 1), num_normal)
            logger.warning(
                "Prn: the training set holds no labelled anomalies, so it trains on unseen (Perlin/texture) anomalies "
                "only. PRN is meant to learn from a few real ones: give the datamodule anomalous_shots=m (e.g. "
                "KShotMVTecAD(k_shot=None, anomalous_shots=10))."
            )
            return
        images, masks = [], []
        for index in abnormal:
            item = train_data[index]
            if item.gt_mask is None:
                msg = f"The labelled anomaly {item.image_path} has no mask: Prn trains on real anomalies' masks."
                raise ValueError(msg)
            image = self._preprocess(item.image[None].to(self.device))
            mask = F.interpolate(item.gt_mask[None, None].float().to(self.device), size=image.shape[-2:])
            images.append(image)
            masks.append(mask)
        self.anomaly_generator.set_seen_bank(torch.cat(images), torch.cat(masks), num_normal)
        logger.info(
            "Prn: %d labelled anomalies for seen anomalies (p_direct %.2f).",
            len(abnormal),
            self.anomaly_generator.p_direct,
        )

    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Generate anomalies on the batch's normal images, predict their maps, smooth-L1 + focal loss."""
        del args, kwargs
        images = batch.image
        self.model.check_input(images)
        batch_size, height, width = images.shape[0], *images.shape[-2:]
        labels = batch.gt_label if batch.gt_label is not None else torch.zeros(batch_size, device=images.device)
        masks = (
            batch.gt_mask.reshape(batch_size, 1, height, width).to(images.dtype)
            if batch.gt_mask is not None
            else torch.zeros(batch_size, 1, height, width, device=images.device, dtype=images.dtype)
        )
        images, masks, kinds = self.anomaly_generator(images, masks, labels.long())
        losses = self.loss(self.model(images), masks)
        check_finite_loss(losses, self.current_epoch, self.global_step)
        self.log("train_loss", losses["loss"], prog_bar=True, batch_size=batch_size)
        self.log_dict({f"train_{name}": losses[name] for name in ("l1", "focal")}, batch_size=batch_size)
        anomalous = (kinds != Kind.NORMAL).float().mean()
        self.log("train_anomalous_fraction", anomalous, batch_size=batch_size)
        return {"loss": losses["loss"]}

    def validation_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Predict anomaly maps and scores for validation images."""
        del args, kwargs
        predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam (coupled weight decay, as U) over every trained parameter; the backbone is frozen."""
        parameters = [parameter for parameter in self.model.parameters() if parameter.requires_grad]
        return torch.optim.Adam(parameters, lr=self.learning_rate, weight_decay=self.weight_decay)

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No gradient clipping and no sanity validation (the prototypes do not exist before training)."""
        return {"gradient_clip_val": 0, "num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """ONE_CLASS: anomalib has no supervised type, and it fits only ONE_CLASS models (module docstring)."""
        return LearningType.ONE_CLASS
