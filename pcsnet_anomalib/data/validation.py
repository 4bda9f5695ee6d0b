"""Check a datamodule before a run: its image and mask files, and (for one-class models) a normal training set.

anomalib reads images lazily inside the dataloader with ``PIL.Image.open(path).convert("RGB")``: a
truncated PNG then fails mid-epoch with ``OSError: image file is truncated``, which does not say
which file. Grayscale and RGBA images are fine (converted to RGB); 16-bit images are converted too,
but PIL clips their values at 255, so they come out nearly white: this is reported as a warning.

A model that learns from normal images only treats every training image as normal: labelled anomalies in its
training set (``anomalous_shots`` of :mod:`pcsnet_anomalib.data.anomalous_shots`) would be learnt as normal,
silently. :func:`check_normal_training_set` refuses them by name.
"""

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image

logger = logging.getLogger(__name__)

# Datasets of an anomalib datamodule that each Lightning stage reads.
STAGE_DATASETS = {"fit": ("train_data", "val_data"), "validate": ("val_data",), "test": ("test_data",)}
# PIL modes with more than 8 bits per channel; ``convert("RGB")`` clips them at 255.
WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
MAX_LISTED = 10


def dataset_files(dataset: Any) -> list[str]:
    """Image and (non-empty) mask paths of an anomalib dataset, in sample order."""
    samples = dataset.samples
    paths = [str(path) for path in samples.image_path]
    if "mask_path" in samples:
        paths += [str(path) for path in samples.mask_path if isinstance(path, str | Path) and str(path)]
    return paths


def check_image_files(paths: Iterable[str]) -> None:
    """Decode every file; raise ``ValueError`` naming the unreadable ones, warn about 16-bit ones."""
    broken: list[str] = []
    wide: list[str] = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
                mode = image.mode
        except (OSError, ValueError, SyntaxError) as err:
            broken.append(f"{path} ({type(err).__name__}: {err})")
            continue
        if mode in WIDE_MODES:
            wide.append(path)
    if broken:
        listed = "\n  ".join(broken[:MAX_LISTED])
        more = f"\n  ... and {len(broken) - MAX_LISTED} more" if len(broken) > MAX_LISTED else ""
        msg = f"{len(broken)} image file(s) cannot be read; replace or remove them:\n  {listed}{more}"
        raise ValueError(msg)
    if wide:
        logger.warning(
            "%d image(s) have more than 8 bits per channel (e.g. %s); anomalib's read_image clips them at 255 "
            "when converting to RGB, so convert them to 8-bit first if their values exceed 255.",
            len(wide),
            wide[0],
        )


def check_datamodule_files(datamodule: Any, stage: str) -> None:
    """Check the files of the datasets ``stage`` reads (no-op for datamodules without anomalib datasets).

    Raises:
        ValueError: fitting with a training set of no images (a wrong root or category: Lightning would otherwise
            run zero steps and save an untrained model), or image files that cannot be read (all of them named).
    """
    train_data = getattr(datamodule, "train_data", None)
    if stage == "fit" and train_data is not None and hasattr(train_data, "samples") and len(train_data.samples) == 0:
        category = getattr(train_data, "category", None) or "this dataset"
        msg = f"The training set of {category} has no normal images: check the dataset root and category."
        raise ValueError(msg)
    paths: list[str] = []
    for name in STAGE_DATASETS.get(stage, ()):
        dataset = getattr(datamodule, name, None)
        if dataset is not None and hasattr(dataset, "samples"):
            paths += dataset_files(dataset)
    check_image_files(dict.fromkeys(paths))


def check_normal_training_set(datamodule: Any, stage: str, model_name: str) -> None:
    """When fitting, raise ``ValueError`` if the training set holds abnormal images (``model_name`` learns normality).

    A no-op for other stages and for datamodules without an anomalib training set.
    """
    train_data = getattr(datamodule, "train_data", None)
    samples = getattr(train_data, "samples", None)
    if stage != "fit" or samples is None or "label_index" not in samples:
        return
    abnormal = sorted(str(path) for path in samples.image_path[samples.label_index == 1])
    if abnormal:
        msg = (
            f"{model_name} learns from normal images only, but the training set holds {len(abnormal)} abnormal "
            f"image(s) (e.g. {abnormal[0]}), which it would learn as normal. To score it on the same test images "
            "as a model trained with anomalous shots, set train_on_anomalous_shots=False on the datamodule (the "
            "images then leave test and validation without joining training); otherwise set anomalous_shots=0."
        )
        raise ValueError(msg)
