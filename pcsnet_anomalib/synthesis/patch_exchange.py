"""Pseudo-anomaly synthesis by natural-synthetic-anomaly "patch exchange", as in the official PCSNet code.

PCSNet trains on normal images only, so it fabricates anomalies: a rectangular patch is cut from an image (the same
image by default) and pasted somewhere else in it ("swap" mode of the official ``self_sup_tasks.patch_ex`` with
``resize=False, shift=True, same=True``). The patch half-widths follow ``lower + Gamma(shape, scale)`` times the image
size, clipped to per-category bounds. For objects on a plain background, an object mask (mean brightness far from the
background brightness, cleaned with a 7x7 median) keeps patches on the object: the source box must be mostly object,
the destination must overlap the source object enough, and only object pixels (source or destination) are pasted.

Deviations from the official code, on purpose:

* The label mask is exact: 1 where any channel changed, 0 elsewhere. The official code labels pixels whose mean
  absolute change exceeds 1 (on 0-255) and then median-blurs the label, which both misses faint changes and marks
  unchanged pixels. An exact mask makes the segmentation target agree with the image.
* Candidate positions are drawn in one batch of ``max_attempts`` and the first acceptable one is used, instead of
  drawing one at a time; the chosen position has the same distribution ("first success among i.i.d. draws").
* Destination boxes are placed uniformly anywhere they fit entirely (the official range is one pixel narrower on each
  side), and half-widths are at least one pixel and at most half the image, so small images never crash.
* The official destination test re-checks the source object fraction, which the source test already guaranteed; only
  the overlap test (``|src object & dest object| / |src object| > min_overlap_pct``) is applied here.
* When a patch cannot be placed within ``max_attempts`` the image is left unchanged for that patch and
  ``failed_patches`` is incremented (the official code prints a message and does the same).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from numpy.lib.stride_tricks import sliding_window_view

logger = logging.getLogger(__name__)

MEDIAN_KERNEL = 7
_OVERLAP_CHUNK = 16  # destination candidates checked per vectorised step


@dataclass(frozen=True)
class PatchExchangeConfig:
    """Parameters of one patch-exchange preset (fractions refer to image height and width; brightness to 0-255)."""

    width_bounds: tuple[tuple[float, float], tuple[float, float]] = ((0.03, 0.4), (0.03, 0.4))
    num_patches: int = 1
    gamma_params: tuple[float, float, float] | None = (2.0, 0.05, 0.03)
    min_object_pct: float = 0.25
    min_overlap_pct: float = 0.25
    background: tuple[float, float] | None = None
    same_image: bool = True
    max_attempts: int = 200
    rotation_sensitive: bool = False

    def __post_init__(self) -> None:
        """Normalise sequences to tuples (YAML and CLIs give lists) and reject invalid values with a clear message."""
        try:
            bounds = tuple((float(lo), float(hi)) for lo, hi in self.width_bounds)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"width_bounds must be ((min_h, max_h), (min_w, max_w)) of floats, got {self.width_bounds!r}"
            ) from err
        if len(bounds) != 2:
            raise ValueError(f"width_bounds needs exactly two (min, max) pairs (height, width), got {bounds!r}")
        for axis, (lo, hi) in zip(("height", "width"), bounds, strict=True):
            if not (0.0 < lo <= 0.5 and 0.0 < hi <= 0.5):
                raise ValueError(f"width_bounds for {axis} must lie in (0, 0.5] (half-width fraction), got {(lo, hi)}")
            if lo > hi:
                raise ValueError(f"width_bounds for {axis} has min {lo} > max {hi}; swap them")
        object.__setattr__(self, "width_bounds", bounds)

        if isinstance(self.num_patches, bool) or not isinstance(self.num_patches, int) or self.num_patches < 1:
            raise ValueError(f"num_patches must be an integer >= 1, got {self.num_patches!r}")
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be an integer >= 1, got {self.max_attempts!r}")

        if self.gamma_params is not None:
            gamma = tuple(float(v) for v in self.gamma_params)
            if len(gamma) != 3:
                raise ValueError(
                    f"gamma_params must be (shape, scale, lower offset) or None, got {self.gamma_params!r}"
                )
            shape, scale, lower = gamma
            if shape <= 0 or scale <= 0 or lower < 0:
                raise ValueError(f"gamma_params needs shape > 0, scale > 0, lower offset >= 0, got {gamma}")
            object.__setattr__(self, "gamma_params", gamma)

        for name in ("min_object_pct", "min_overlap_pct"):
            value = float(getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a fraction in [0, 1], got {value}")
            object.__setattr__(self, name, value)

        if self.background is not None:
            background = tuple(float(v) for v in self.background)
            if len(background) != 2:
                raise ValueError(f"background must be (brightness, threshold) or None, got {self.background!r}")
            brightness, threshold = background
            if not 0.0 <= brightness <= 255.0 or threshold < 0.0:
                raise ValueError(
                    f"background needs brightness in [0, 255] and threshold >= 0 (0-255 units), got {background}"
                )
            object.__setattr__(self, "background", background)

        for name in ("same_image", "rotation_sensitive"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")


def object_mask(images: torch.Tensor, background: tuple[float, float]) -> torch.Tensor:
    """Object mask (B, H, W) bool of [0, 1] images: mean brightness (0-255) differs from the background by > threshold.

    The raw mask is cleaned with a 7x7 median filter, computed as a box count (for a binary mask the median of 49
    values is 1 exactly when at least 25 are 1) with replicated borders, matching ``cv2.medianBlur``.
    """
    brightness, threshold = background
    raw = ((images.float().mean(dim=1, keepdim=True) * 255.0 - brightness).abs() > threshold).float()
    pad = MEDIAN_KERNEL // 2
    padded = F.pad(raw, (pad, pad, pad, pad), mode="replicate")
    counts = F.avg_pool2d(padded, MEDIAN_KERNEL, stride=1) * MEDIAN_KERNEL**2
    return (counts > MEDIAN_KERNEL**2 / 2)[:, 0]


def _half_width_range(dim: int, bounds: tuple[float, float]) -> tuple[int, int]:
    """Pixel range [min, max] of the patch half-width along one axis of size ``dim``."""
    lo, hi = bounds
    min_w = min(max(1, round(lo * dim)), dim // 2)
    max_w = min(max(min_w, round(hi * dim)), dim // 2)
    return min_w, max_w


class PatchExchange:
    """Callable pseudo-anomaly generator; pure torch on the batch's device, random numbers from a numpy Generator."""

    def __init__(self, config: PatchExchangeConfig | None = None, seed: int | None = None) -> None:
        self.config = config if config is not None else PatchExchangeConfig()
        self.rng = np.random.default_rng(seed)
        self.failed_patches = 0
        self.total_patches = 0

    def reseed(self, seed: int) -> None:
        """Restart the random stream, e.g. per worker or per epoch for reproducible synthesis."""
        self.rng = np.random.default_rng(seed)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (augmented images, mask (B, 1, H, W) of 0/1 in the images' dtype marking exactly the changed pixels).

        ``images`` is a float (B, C, H, W) batch in [0, 1]; it is not modified.
        """
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(
                f"images must be a float tensor (B, C, H, W), got dtype {images.dtype} shape {images.shape}"
            )
        height, width = images.shape[-2:]
        if height < 2 or width < 2:
            raise ValueError(f"images must be at least 2x2 pixels, got {height}x{width}")
        cfg = self.config
        augmented = images.clone()
        batch = images.shape[0]

        obj_dev = obj_np = sat = None
        if cfg.background is not None:
            obj_dev = object_mask(images, cfg.background)
            obj_np = obj_dev.cpu().numpy()
            sat = np.pad(obj_np.astype(np.int32).cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))

        for dest in range(batch):
            src = dest if cfg.same_image else (dest - 1) % batch
            for i in range(cfg.num_patches):
                if i > 0 and self.rng.integers(2) == 0:
                    continue
                self.total_patches += 1
                boxes = self._place(
                    (height, width),
                    None if obj_np is None else (obj_np[src], sat[src], obj_np[dest]),
                )
                if boxes is None:
                    self.failed_patches += 1
                    logger.debug("No suitable patch position found for image %d; patch skipped.", dest)
                    continue
                (y0, x0), (ty, tx), (ph, pw) = boxes
                patch = images[src, :, y0 : y0 + ph, x0 : x0 + pw]
                if obj_dev is None:
                    augmented[dest, :, ty : ty + ph, tx : tx + pw] = patch
                else:
                    keep = obj_dev[src, y0 : y0 + ph, x0 : x0 + pw] | obj_dev[dest, ty : ty + ph, tx : tx + pw]
                    region = augmented[dest, :, ty : ty + ph, tx : tx + pw]
                    augmented[dest, :, ty : ty + ph, tx : tx + pw] = torch.where(keep, patch, region)

        mask = (augmented != images).any(dim=1, keepdim=True).to(images.dtype)
        return augmented, mask

    def _place(
        self,
        size: tuple[int, int],
        objects: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None:
        """Sample source top-left, destination top-left and patch size; None if no acceptable position was found.

        ``objects`` is (source object mask, its summed-area table, destination object mask) or None (no background).
        """
        cfg = self.config
        height, width = size
        ranges = [_half_width_range(dim, bounds) for dim, bounds in zip(size, cfg.width_bounds, strict=True)]
        if cfg.gamma_params is not None:
            shape, scale, lower = cfg.gamma_params
            half = [
                int(np.clip((lower + self.rng.gamma(shape, scale)) * dim, lo, hi))
                for dim, (lo, hi) in zip(size, ranges, strict=True)
            ]
        else:
            half = [int(self.rng.integers(lo, hi + 1)) for lo, hi in ranges]

        tries = 1 if objects is None else cfg.max_attempts
        (min_h, _), (min_w, _) = ranges
        cy = self.rng.integers(min_h, height - min_h + 1, size=tries)
        cx = self.rng.integers(min_w, width - min_w + 1, size=tries)
        y0, y1 = np.clip(cy - half[0], 0, height), np.clip(cy + half[0], 0, height)
        x0, x1 = np.clip(cx - half[1], 0, width), np.clip(cx + half[1], 0, width)
        if objects is None:
            pick = 0
        else:
            src_obj, sat, dest_obj = objects
            inside = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
            ok = inside / ((y1 - y0) * (x1 - x0)) > cfg.min_object_pct
            if not ok.any():
                return None
            pick = int(np.argmax(ok))
        sy, sx = int(y0[pick]), int(x0[pick])
        ph, pw = int(y1[pick]) - sy, int(x1[pick]) - sx

        ty = self.rng.integers(0, height - ph + 1, size=tries)
        tx = self.rng.integers(0, width - pw + 1, size=tries)
        if objects is None:
            return (sy, sx), (int(ty[0]), int(tx[0])), (ph, pw)
        src_win = src_obj[sy : sy + ph, sx : sx + pw]
        src_count = int(src_win.sum())
        windows = sliding_window_view(dest_obj, (ph, pw))
        for start in range(0, tries, _OVERLAP_CHUNK):
            stop = start + _OVERLAP_CHUNK
            overlap = (windows[ty[start:stop], tx[start:stop]] & src_win).sum(axis=(1, 2))
            ok = overlap / src_count > cfg.min_overlap_pct
            if ok.any():
                hit = start + int(np.argmax(ok))
                return (sy, sx), (int(ty[hit]), int(tx[hit])), (ph, pw)
        return None
