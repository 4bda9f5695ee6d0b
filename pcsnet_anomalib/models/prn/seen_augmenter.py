"""U's augmenter of real anomalies for "seen" copy-paste anomalies, re-implemented in torch (``PRN.md`` §5.2, §5.4).

U applies 3 distinct operations drawn from a list of 10 albumentations operations, each with its own probability,
jointly to a real anomalous image and its mask. albumentations is not a dependency, so each operation is written
here in torch, drawing every parameter from the caller's ``torch.Generator``. Geometric operations move the image
and the mask together (the mask resampled bilinearly and thresholded at 0.5); photometric ones change the image only.

| # | U (albumentations) | here | p |
| --- | --- | --- | --- |
| 0 | RandomRotate90 | ``rot90`` by 0-3 quarter turns | 1 |
| 1 | Flip (horizontal, vertical or both) | flips | 1 |
| 2 | Transpose | transpose of the two image axes | 1 |
| 3 | OpticalDistortion(distort_limit=1) | radial ``grid_sample``, ``k ~ U(-1, 1)`` | 1 |
| 4 | OneOf(AdditiveGaussianNoise, GaussNoise) | additive Gaussian noise, std U(3, 7) / 255 | 0.2 |
| 5 | OneOf(MotionBlur, MedianBlur(3), Blur(3)) | 3 x 3 box blur | 0.2 |
| 6 | ShiftScaleRotate(0.0625, 0.2, 45) | shift U(-0.0625, 0.0625), scale U(0.8, 1.2), rotate U(-45, 45) | 0.2 |
| 7 | OneOf(OpticalDistortion, GridDistortion, PiecewiseAffine) | the radial distortion of #3 | 0.2 |
| 8 | OneOf(CLAHE, Sharpen, Emboss, RandomBrightnessContrast) | sharpness x2 or brightness/contrast U(0.8, 1.2) | 0.3 |
| 9 | HueSaturationValue | hue U(-0.05, 0.05), saturation U(0.8, 1.2) | 0.3 |

Simplified: motion and median blur are a box blur; grid distortion and piecewise affine are the radial distortion;
CLAHE and emboss are not reproduced.
"""

import torch
import torch.nn.functional as F  # noqa: N812
from torchvision.transforms.v2 import functional as TF  # noqa: N812

NUM_OPERATIONS = 10
OPERATIONS_PER_ANOMALY = 3
PROBABILITIES = (1.0, 1.0, 1.0, 1.0, 0.2, 0.2, 0.2, 0.2, 0.3, 0.3)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _radial_distortion(joint: torch.Tensor, k: float) -> torch.Tensor:
    """Resample ``joint (C, H, W)`` radially: barrel for ``k < 0``, pincushion for ``k > 0``, ``k`` in [-1, 1].

    A point at normalised position ``p`` (``r^2 = |p|^2 / 2``, 1 at the corners) samples ``p (1 + s r^2) / (1 +
    max(s, 0))`` with ``s = k / 2``: the sampling factor stays within [0.5, 1], so the image never folds over.
    """
    height, width = joint.shape[-2:]
    rows = torch.linspace(-1.0, 1.0, height, device=joint.device)
    cols = torch.linspace(-1.0, 1.0, width, device=joint.device)
    y, x = torch.meshgrid(rows, cols, indexing="ij")
    strength = k / 2
    factor = (1.0 + strength * (x.square() + y.square()) / 2) / (1.0 + max(strength, 0.0))
    grid = torch.stack([x * factor, y * factor], dim=-1)[None].to(joint.dtype)
    return F.grid_sample(joint[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]


def _affine(joint: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    height, width = joint.shape[-2:]
    shift = [round(_uniform(generator, -0.0625, 0.0625) * size) for size in (width, height)]
    return TF.affine(
        joint,
        angle=_uniform(generator, -45.0, 45.0),
        translate=shift,
        scale=_uniform(generator, 0.8, 1.2),
        shear=[0.0, 0.0],
        interpolation=TF.InterpolationMode.BILINEAR,
    )


def _geometric(joint: torch.Tensor, operation: int, generator: torch.Generator) -> torch.Tensor:
    if operation == 0:
        return joint.rot90(int(torch.randint(4, (1,), generator=generator)), dims=(-2, -1))
    if operation == 1:
        axes = [(-1,), (-2,), (-2, -1)][int(torch.randint(3, (1,), generator=generator))]
        return joint.flip(axes)
    if operation == 2:
        return joint.transpose(-2, -1)
    if operation in {3, 7}:
        return _radial_distortion(joint, _uniform(generator, -1.0, 1.0))
    return _affine(joint, generator)  # 6


def _photometric(image: torch.Tensor, operation: int, generator: torch.Generator) -> torch.Tensor:
    if operation == 4:
        std = _uniform(generator, 3.0, 7.0) / 255.0
        noise = torch.randn(image.shape, generator=generator).to(image.device, image.dtype)
        return image + std * noise
    if operation == 5:
        return F.avg_pool2d(F.pad(image[None], (1, 1, 1, 1), mode="replicate"), 3, stride=1)[0]
    if operation == 8:
        if float(torch.rand((), generator=generator)) < 0.5:
            return TF.adjust_sharpness(image, 2.0)
        brightness, contrast = _uniform(generator, 0.8, 1.2), _uniform(generator, 0.8, 1.2)
        return TF.adjust_contrast(TF.adjust_brightness(image, brightness), contrast)
    hue, saturation = _uniform(generator, -0.05, 0.05), _uniform(generator, 0.8, 1.2)  # 9
    return TF.adjust_saturation(TF.adjust_hue(image, hue), saturation)


def augment_seen(
    image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply 3 distinct operations of the 10 (each with its probability) to a real anomaly and its mask.

    Args:
        image: ``(3, H, W)`` in ``[0, 1]``; a square image (the transpose keeps its shape).
        mask: ``(1, H, W)`` binary.
        generator: every random draw comes from it.

    Returns:
        The augmented image (clamped to ``[0, 1]``) and binary mask. When the augmented mask is empty (the defect
        moved out of the image), the unaugmented pair is returned, so a seen anomaly always has a defect.
    """
    joint = torch.cat([image, mask], dim=0)
    for operation in torch.randperm(NUM_OPERATIONS, generator=generator)[:OPERATIONS_PER_ANOMALY].tolist():
        if float(torch.rand((), generator=generator)) >= PROBABILITIES[operation]:
            continue
        if operation in {4, 5, 8, 9}:
            joint = torch.cat([_photometric(joint[:3], operation, generator).clamp(0, 1), joint[3:]], dim=0)
        else:
            joint = _geometric(joint, operation, generator)
    augmented_mask = (joint[3:] > 0.5).to(mask.dtype)
    if not augmented_mask.any():
        return image, mask
    return joint[:3].clamp(0, 1), augmented_mask
