"""PRN's anomaly generation on the training batch: "seen" anomalies from the real ones, "unseen" Perlin ones.

Every normal image of a training batch independently stays normal (``p_normal``, 0.5), becomes a "seen"
anomaly (``p_seen``, 0.25) or an "unseen" one (``p_unseen``, 0.25): U's 2 : 1 : 1 per epoch, here in expectation
per batch (``PRN.md`` §5, §11.2). Real anomalies of the batch (label 1, with their masks) are kept as they are.

- Seen: with probability ``p_direct = min(1, reuse_times * m / (N // 2))`` a real anomaly of the bank (the m
  labelled anomalies of the training set) replaces the image as it is (U loads ``reuse_times * m`` of its
  ``N // 2`` seen items directly); otherwise a real anomaly and its mask, augmented by 3 of U's 10 operations
  (:func:`~.seen_augmenter.augment_seen`), are pasted onto the normal image where the mask is set (hard paste: U's
  "extended" anomalies); a defect that falls mostly off the normal image's object is first moved onto it (the
  object mask of the category's Pcsnet preset ``background``, :func:`object_mask`; textures: the whole image).
- Unseen: anomalib's ``PerlinAnomalyGenerator`` (DRAEM's recipe, as U) with ``probability=1`` and the texture
  weight in ``[0.2, 1)``; the base image is first rotated by U(-90, 90) degrees with probability 0.3 (U). Textures
  come from ``anomaly_source_path`` (e.g. DTD, as DRAEM's argument) or, by default, from the photographs that ship
  with scikit-image (written once to the package's cache folder); without scikit-image, from Perlin noise
  (anomalib's own fallback).
- No real anomaly in training: the seen share goes to unseen anomalies (``Prn`` warns).

Randomness: every draw comes from the module's own seeded generator (:class:`SeededModule`, saved in checkpoints).
``PerlinAnomalyGenerator`` and torchvision draw from torch's global RNG, so each unseen anomaly runs inside
``torch.random.fork_rng`` seeded by a number drawn from the module's generator: the same seed gives the same
batch, and the caller's global RNG is left as it was.
"""

import logging
import os
from pathlib import Path

import torch
from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
from PIL import Image
from torchvision.transforms.v2 import functional as TF  # noqa: N812

from pcsnet_anomalib.data.demo import resolve_demo_root
from pcsnet_anomalib.models.components import SeededModule
from pcsnet_anomalib.models.pcsnet.synthesis import object_mask

from .seen_augmenter import augment_seen

logger = logging.getLogger(__name__)

SKIMAGE_TEXTURES = ("brick", "grass", "gravel", "coffee", "chelsea", "astronaut", "rocket", "immunohistochemistry")
"""``skimage.data`` photographs used as default textures (bundled with scikit-image: nothing downloads)."""
_SEED_BOUND = 2**62
_PERLIN_CONSTRUCTION_SEED = 0
ON_FOREGROUND = 2 / 3
"""U pastes a defect in place when more than this share of its mask falls on the normal image's foreground."""


class Kind:
    """What the generator made of each image of a batch (``PrnAnomalyGenerator.forward``'s ``kinds``)."""

    NORMAL = 0
    REAL = 1  # a labelled anomaly of the datamodule, kept as it is
    SEEN_DIRECT = 2  # replaced by a real anomaly of the bank
    SEEN_PASTED = 3  # a real anomaly's augmented defect pasted on it
    UNSEEN = 4  # a Perlin-noise texture anomaly


def default_texture_folder() -> Path | None:
    """Folder of scikit-image's photographs as PNG files (written once to the cache); ``None`` without scikit-image.

    The cache is the demo data's (``$PCSNET_DEMO_ROOT``, else ``~/.cache/pcsnet_anomalib``), folder ``textures``.
    Files are written to a temporary name and renamed, so concurrent runs never read a half-written file.
    """
    try:
        from skimage import data as skdata
    except ImportError:
        return None
    folder = resolve_demo_root().parent / "textures"
    folder.mkdir(parents=True, exist_ok=True)
    for name in SKIMAGE_TEXTURES:
        path = folder / f"{name}.png"
        if not path.is_file():
            temporary = folder / f".{name}.{os.getpid()}.png"
            Image.fromarray(getattr(skdata, name)()).convert("RGB").save(temporary)
            temporary.replace(path)
    return folder


class PrnAnomalyGenerator(SeededModule):
    """Turn part of a batch's normal images into seen and unseen anomalies, from the module's own generator.

    Args:
        seed: seeds the generator (saved in ``state_dict``).
        p_normal, p_seen, p_unseen: probabilities for a normal image (they must sum to 1).
        reuse_times: U's number of direct reuses of each real anomaly per epoch (sets ``p_direct``).
        unseen_rotation_probability: probability of rotating an unseen anomaly's base image (0.3 in U).
        anomaly_source_path: folder of texture images for unseen anomalies (e.g. DTD); ``None`` = scikit-image's.
        seen_in_foreground: move pasted defects onto the normal image's object when they fall mostly off it (needs
            :attr:`background`, set by :meth:`set_background`; without one the whole image is foreground).

    Raises:
        ValueError: probabilities outside [0, 1] or not summing to 1, or ``reuse_times < 0``.
    """

    def __init__(
        self,
        seed: int = 0,
        p_normal: float = 0.5,
        p_seen: float = 0.25,
        p_unseen: float = 0.25,
        reuse_times: int = 5,
        unseen_rotation_probability: float = 0.3,
        anomaly_source_path: str | Path | None = None,
        seen_in_foreground: bool = True,
    ) -> None:
        super().__init__(seed)
        probabilities = (p_normal, p_seen, p_unseen, unseen_rotation_probability)
        if min(probabilities) < 0 or max(probabilities) > 1 or abs(p_normal + p_seen + p_unseen - 1.0) > 1e-6:
            msg = (
                f"p_normal, p_seen, p_unseen must be probabilities summing to 1 (got {p_normal}, {p_seen}, "
                f"{p_unseen}) and unseen_rotation_probability in [0, 1] (got {unseen_rotation_probability})."
            )
            raise ValueError(msg)
        if reuse_times < 0:
            msg = f"reuse_times must be >= 0, got {reuse_times}."
            raise ValueError(msg)
        self.p_normal, self.p_seen, self.p_unseen = p_normal, p_seen, p_unseen
        self.reuse_times = reuse_times
        self.unseen_rotation_probability = unseen_rotation_probability
        self.anomaly_source_path = anomaly_source_path
        self.seen_in_foreground = seen_in_foreground
        self.background: tuple[float, float] | None = None
        self.seen_images: torch.Tensor | None = None
        self.seen_masks: torch.Tensor | None = None
        self.p_direct = 0.0
        self._perlin: PerlinAnomalyGenerator | None = None

    @property
    def has_seen_bank(self) -> bool:
        """Whether real anomalies were given (:meth:`set_seen_bank`)."""
        return self.seen_images is not None and self.seen_images.shape[0] > 0

    def set_seen_bank(self, images: torch.Tensor, masks: torch.Tensor, num_normal: int) -> None:
        """Use the real anomalies ``images (m, 3, H, W)`` in [0, 1] with ``masks (m, 1, H, W)`` for seen anomalies.

        ``num_normal`` (N) sets ``p_direct = min(1, reuse_times * m / (N // 2))``. An empty bank clears it.
        """
        if images.shape[0] == 0:
            self.seen_images = self.seen_masks = None
            self.p_direct = 0.0
            return
        if masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]:
            msg = f"Seen anomalies {tuple(images.shape)} and masks {tuple(masks.shape)} do not match."
            raise ValueError(msg)
        self.seen_images, self.seen_masks = images, (masks > 0.5).to(images.dtype)
        self.p_direct = min(1.0, self.reuse_times * images.shape[0] / max(1, num_normal // 2))

    def set_background(self, background: tuple[float, float] | None) -> None:
        """Background ``(brightness, threshold)`` (0-255, as :func:`object_mask` takes it); ``None``: all foreground."""
        self.background = None if background is None else (float(background[0]), float(background[1]))

    def _place_on_foreground(
        self, normal: torch.Tensor, anomaly: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Move a defect onto the normal image's object when at most 2/3 of it lies there (U's rule, ``PRN.md`` §5.2).

        The whole defect moves so that its centroid lands on a random foreground point inside the box inset by half
        the defect's height and width (U moves each connected component separately). No foreground point: in place.
        """
        if not self.seen_in_foreground or self.background is None:
            return anomaly, mask
        foreground = object_mask(normal[None], self.background)[0]
        defect = mask[0] > 0.5
        if (defect & foreground).sum() > ON_FOREGROUND * defect.sum():
            return anomaly, mask
        rows, cols = defect.nonzero(as_tuple=True)
        half_height = int(rows.max() - rows.min()) // 2 + 1
        half_width = int(cols.max() - cols.min()) // 2 + 1
        inside = torch.zeros_like(foreground)
        inside[half_height : foreground.shape[0] - half_height, half_width : foreground.shape[1] - half_width] = True
        targets = (foreground & inside).nonzero()
        if targets.shape[0] == 0:
            return anomaly, mask
        target = targets[int(torch.randint(targets.shape[0], (1,), generator=self.generator))]
        shift = [int(target[1]) - round(float(cols.float().mean())), int(target[0]) - round(float(rows.float().mean()))]
        moved = TF.affine(
            torch.cat([anomaly, mask], dim=0),
            angle=0.0,
            translate=shift,
            scale=1.0,
            shear=[0.0, 0.0],
            interpolation=TF.InterpolationMode.NEAREST,
        )
        if not moved[3:].any():
            return anomaly, mask
        return moved[:3], moved[3:]

    def perlin(self) -> PerlinAnomalyGenerator:
        """Anomalib's Perlin generator over the texture folder (built on first use; construction draws randomly)."""
        if self._perlin is None:
            source = self.anomaly_source_path
            if source is None:
                source = default_texture_folder()
                if source is None:
                    logger.warning("scikit-image is not installed: unseen anomalies use Perlin-noise textures.")
            elif not Path(source).is_dir():
                msg = f"anomaly_source_path {source} is not a folder of texture images."
                raise ValueError(msg)
            with torch.random.fork_rng(devices=[]):
                # One draw at construction (its solarize threshold): fixed, so it is the same in every run and after
                # a checkpoint is loaded, and the module's stream does not depend on when the generator is built.
                torch.manual_seed(_PERLIN_CONSTRUCTION_SEED)
                self._perlin = PerlinAnomalyGenerator(
                    anomaly_source_path=source, probability=1.0, blend_factor=(0.2, 1.0)
                )
            self._perlin.anomaly_source_paths.sort()  # rglob's order is the file system's
        return self._perlin

    def _uniform(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def _choose(self) -> int:
        draw = self._uniform()
        if draw < self.p_normal:
            return Kind.NORMAL
        if draw < self.p_normal + self.p_seen and self.has_seen_bank:
            return Kind.SEEN_DIRECT if self._uniform() < self.p_direct else Kind.SEEN_PASTED
        return Kind.UNSEEN

    def _seen(self, image: torch.Tensor, kind: int) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.seen_images is not None
        assert self.seen_masks is not None
        index = int(torch.randint(self.seen_images.shape[0], (1,), generator=self.generator))
        anomaly = self.seen_images[index].to(image.device, image.dtype)
        mask = self.seen_masks[index].to(image.device, image.dtype)
        if kind == Kind.SEEN_DIRECT:
            return anomaly, mask
        anomaly, mask = augment_seen(anomaly, mask, self.generator)
        anomaly, mask = self._place_on_foreground(image, anomaly, mask)
        return image * (1 - mask) + anomaly * mask, mask

    def _unseen(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        perlin = self.perlin()
        seed = int(torch.randint(_SEED_BOUND, (1,), generator=self.generator))
        devices = [image.device.index or 0] if image.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            if torch.rand(()) < self.unseen_rotation_probability:
                angle = float(torch.empty(()).uniform_(-90.0, 90.0))
                image = TF.rotate(image, angle, interpolation=TF.InterpolationMode.BILINEAR)
            anomalous, mask = perlin(image)
        return anomalous.to(image.dtype), mask.to(image.dtype)

    def forward(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        labels: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Generate anomalies on the normal images of a batch.

        Args:
            images: ``(B, 3, H, W)`` in ``[0, 1]``.
            masks: ``(B, 1, H, W)`` ground truth (zeros for normal images).
            labels: ``(B,)``, 1 for the datamodule's real anomalies (kept as they are).

        Returns:
            The images, the masks (binary, ``(B, 1, H, W)``) and each image's :class:`Kind` ``(B,)``.
        """
        out_images, out_masks, kinds = [], [], []
        for source_image, source_mask, label in zip(images, masks, labels.tolist(), strict=True):
            kind = Kind.REAL if label == 1 else self._choose()
            image, mask = source_image, source_mask
            if kind in {Kind.SEEN_DIRECT, Kind.SEEN_PASTED}:
                image, mask = self._seen(source_image, kind)
            elif kind == Kind.UNSEEN:
                image, mask = self._unseen(source_image)
            out_images.append(image)
            out_masks.append((mask > 0.5).to(images.dtype))
            kinds.append(kind)
        return torch.stack(out_images), torch.stack(out_masks), torch.tensor(kinds, device=images.device)
