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

The module draws from its own seeded ``torch.Generator`` (:class:`SeededModule`): one 62-bit number per batch
seeds the numpy generator that samples that batch's patch sizes and positions (numpy's gamma sampler has no
torch equivalent that takes a generator). The generator state, the preset and the fallback counters are part of
the module's ``state_dict``, so checkpoints carry them and a resumed fit draws the same pseudo-anomalies.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from numpy.lib.stride_tricks import sliding_window_view

from pcsnet_anomalib.models.components import SeededModule

from .synthesis_presets import PatchExchangeConfig, load_preset

logger = logging.getLogger(__name__)

MEDIAN_KERNEL = 7
_OVERLAP_CHUNK = 16  # destination candidates checked per vectorised step
_SEED_BOUND = 2**62  # per-batch numpy seeds are drawn below this bound


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


class PatchExchange(SeededModule):
    """Pseudo-anomaly generator: pure torch on the batch's device, random numbers from the module's own generator.

    Args:
        preset: a preset name (``"default"``, ``"<dataset>/<category>"``) or a :class:`PatchExchangeConfig`;
            ``None`` leaves it to be set once the data is known (:meth:`use_preset`).
        seed: seeds the module's generator.
        stream: tells this module's random stream apart from other modules seeded with ``seed``.
    """

    def __init__(self, preset: str | PatchExchangeConfig | None = None, seed: int = 0, stream: int = 0) -> None:
        super().__init__(seed, stream)
        self.preset_name: str | None = None
        self.config: PatchExchangeConfig | None = None
        self.failed_patches = 0
        self.total_patches = 0
        if preset is not None:
            self.use_preset(preset)

    def use_preset(self, preset: str | PatchExchangeConfig) -> None:
        """Synthesise with ``preset`` (a name, resolved from the YAML tables, or a config)."""
        if isinstance(preset, PatchExchangeConfig):
            self.preset_name, self.config = None, preset
        else:
            self.preset_name, self.config = preset, load_preset(preset)

    def get_extra_state(self) -> dict[str, Any]:
        """Generator state, preset and fallback counters, saved with the weights."""
        return {
            **super().get_extra_state(),
            "preset_name": self.preset_name,
            "config": None if self.config is None else dataclasses.asdict(self.config),
            "failed_patches": self.failed_patches,
            "total_patches": self.total_patches,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_extra_state` saved."""
        super().set_extra_state(state)
        self.preset_name = state["preset_name"]
        self.config = None if state["config"] is None else PatchExchangeConfig(**state["config"])
        self.failed_patches = state["failed_patches"]
        self.total_patches = state["total_patches"]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (augmented images, mask (B, 1, H, W) of 0/1 in the images' dtype marking exactly the changed pixels).

        ``images`` is a float (B, C, H, W) batch in [0, 1]; it is not modified.
        """
        if self.config is None:
            msg = "PatchExchange has no preset yet: call use_preset(name) or build it with a preset."
            raise RuntimeError(msg)
        if images.ndim != 4 or not images.is_floating_point():
            msg = f"images must be a float tensor (B, C, H, W), got dtype {images.dtype} shape {images.shape}"
            raise ValueError(msg)
        height, width = images.shape[-2:]
        if height < 2 or width < 2:
            msg = f"images must be at least 2x2 pixels, got {height}x{width}"
            raise ValueError(msg)
        cfg = self.config
        rng = np.random.default_rng(int(torch.randint(_SEED_BOUND, (1,), generator=self.generator)))
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
                if i > 0 and rng.integers(2) == 0:
                    continue
                self.total_patches += 1
                boxes = self._place(
                    rng,
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
        rng: np.random.Generator,
        size: tuple[int, int],
        objects: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None:
        """Sample source top-left, destination top-left and patch size; None if no acceptable position was found.

        ``objects`` is (source object mask, its summed-area table, destination object mask) or None (no background).
        """
        cfg = self.config
        assert cfg is not None
        height, width = size
        ranges = [_half_width_range(dim, bounds) for dim, bounds in zip(size, cfg.width_bounds, strict=True)]
        if cfg.gamma_params is not None:
            shape, scale, lower = cfg.gamma_params
            half = [
                int(np.clip((lower + rng.gamma(shape, scale)) * dim, lo, hi))
                for dim, (lo, hi) in zip(size, ranges, strict=True)
            ]
        else:
            half = [int(rng.integers(lo, hi + 1)) for lo, hi in ranges]

        tries = 1 if objects is None else cfg.max_attempts
        (min_h, _), (min_w, _) = ranges
        cy = rng.integers(min_h, height - min_h + 1, size=tries)
        cx = rng.integers(min_w, width - min_w + 1, size=tries)
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

        ty = rng.integers(0, height - ph + 1, size=tries)
        tx = rng.integers(0, width - pw + 1, size=tries)
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
