"""The few-real-anomalies protocol as a data concern: m labelled test anomalies, with their masks, move to training.

PRN (this package's ``Prn``; also DRA, BGAD) train with a handful of real anomalies: m = 10 abnormal test images
per category, stratified over the defect types, whose ground-truth masks are used for training. They must then
leave the test set (and the validation set), or the model is scored on the images it learnt from.
:func:`select_anomalous_shots` is the one selection rule, a pure function of the test set's abnormal image
paths (as a set), m and the seed; :class:`AnomalousShotsMixin` adds it to any anomalib datamodule.

Where the move happens, and why there: the m images are chosen and taken out of the test set at the end of
``_setup``, before anomalib draws its test and validation splits, so neither split can contain them whatever
``test_split_mode`` and ``val_split_mode`` are (``same_as_test`` copies the test set, ``from_test`` samples it).
They are added to the training set only at the end of ``_create_val_split``: after a ``from_train`` or
``synthetic`` validation split (which would otherwise send some of them to validation, or paste synthetic
defects on them as if they were normal) and after the k-shot restriction of
:class:`~pcsnet_anomalib.data.kshot.KShotMixin` (which keeps k normal images and would drop them).

Design: the option lives on the k-shot datamodules themselves (``KShotMVTecAD``, ``KShotMPDD``, ``KShotFolder``,
``KShotPcsnetDemo`` have ``AnomalousShotsMixin`` in front of ``KShotMixin``) rather than on a second family
of classes: one class per dataset carries both choices of the protocol, a benchmark grid sets
``data.init_args.k_shot`` and ``data.init_args.anomalous_shots`` on the same ``class_path``, and their
checkpoint state is one dict. ``anomalous_shots=0`` (the default) changes nothing, and ``k_shot=None`` keeps
every normal image (PRN's protocol: all normal images plus m anomalies). The mixin also works alone in front
of any other anomalib datamodule (``class AnomalousShotsVisa(AnomalousShotsMixin, Visa)``).

Models that learn from normal images only must not be given the anomalies: this package's ``Pcsnet``,
``Pfm`` and ``Pefm`` refuse a training set that holds abnormal images
(:func:`~pcsnet_anomalib.data.validation.check_normal_training_set`); anomalib's own models do not check, so
give them ``train_on_anomalous_shots=False``: the m images still leave test and validation, and every model
of a comparison is scored on the same remaining test images.

Example:
    >>> from pcsnet_anomalib.data import KShotMVTecAD
    >>> supervised = KShotMVTecAD(category="bottle", k_shot=None, anomalous_shots=10, anomalous_shots_seed=1)
    >>> baseline = KShotMVTecAD(
    ...     category="bottle", k_shot=None, anomalous_shots=10, anomalous_shots_seed=1, train_on_anomalous_shots=False
    ... )  # the same test images, normal training images only

In a benchmark configuration::

    data:
      class_path: KShotMVTecAD
      init_args:
        k_shot: null
        anomalous_shots: 10
        anomalous_shots_seed:
          grid: [0, 1, 2]
        train_on_anomalous_shots: false  # anomalib's models, Pcsnet, Pfm, Pefm
"""

import logging
from pathlib import Path
from typing import Any

import numpy as np
from anomalib.data.utils import Split

logger = logging.getLogger(__name__)


def check_anomalous_shots(anomalous_shots: int) -> None:
    """Raise ``ValueError`` unless ``anomalous_shots`` is a number of images (an int >= 0, not a bool)."""
    if isinstance(anomalous_shots, bool) or not isinstance(anomalous_shots, int) or anomalous_shots < 0:
        msg = (
            f"anomalous_shots must be a number of abnormal test images to train on (an int >= 0; 0 = none), "
            f"got {anomalous_shots!r}."
        )
        raise ValueError(msg)


def defect_type(image_path: str) -> str:
    """The defect type of an abnormal image: the name of the folder that holds it.

    MVTec AD, MPDD and the demo data keep each defect type in its own ``test/<defect>`` folder (their ``label``
    column is that folder's name); ``Folder`` labels every abnormal image ``abnormal``, but its abnormal
    directories (or their sub-folders) are the defect types. The folder name is the key that works for all.
    """
    return Path(image_path).parent.name


def _has_mask(mask_path: object) -> bool:
    return isinstance(mask_path, str | Path) and bool(str(mask_path)) and Path(mask_path).is_file()


def select_anomalous_shots(dataset: Any, anomalous_shots: int, seed: int) -> list[str]:
    """Image paths of ``anomalous_shots`` abnormal images of a test set, stratified by defect type, sorted.

    With T defect types (:func:`defect_type`), floor(m / T) images of each type, then m mod T more drawn from
    the images left over from all types, with ``numpy.random.default_rng(seed)`` over the sorted paths: the same
    paths (in any order), m and seed always choose the same images. ``anomalous_shots=0`` chooses none.

    Raises:
        ValueError: m not an int >= 0; no abnormal images; more images asked than there are, in total or of a
            defect type (floor(m / T) > its count); a chosen image without a mask file.
    """
    check_anomalous_shots(anomalous_shots)
    if anomalous_shots == 0:
        return []
    samples = dataset.samples
    category = getattr(dataset, "category", None) or "this dataset"
    abnormal = sorted(samples.image_path[samples.label_index == 1].tolist())
    if not abnormal:
        msg = (
            f"anomalous_shots={anomalous_shots} but the test set of {category} has no abnormal images: "
            "check the dataset root and category (Folder: abnormal_dir), or set anomalous_shots=0."
        )
        raise ValueError(msg)
    if anomalous_shots > len(abnormal):
        msg = (
            f"anomalous_shots={anomalous_shots} but the test set of {category} has only {len(abnormal)} abnormal "
            f"images: set anomalous_shots to at most {len(abnormal)}."
        )
        raise ValueError(msg)
    by_type: dict[str, list[str]] = {}
    for path in abnormal:
        by_type.setdefault(defect_type(path), []).append(path)
    per_type, extra = divmod(anomalous_shots, len(by_type))
    smallest = min(by_type, key=lambda name: (len(by_type[name]), name))
    if per_type > len(by_type[smallest]):
        usable = min(len(abnormal), len(by_type) * (len(by_type[smallest]) + 1) - 1)
        msg = (
            f"anomalous_shots={anomalous_shots} asks for {per_type} images of each of the {len(by_type)} defect "
            f"types of {category}, but defect type {smallest!r} has only {len(by_type[smallest])}: set "
            f"anomalous_shots to at most {usable}."
        )
        raise ValueError(msg)

    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    for name in sorted(by_type):
        paths = by_type[name]
        chosen += [paths[index] for index in rng.choice(len(paths), size=per_type, replace=False)]
    leftovers = sorted(set(abnormal) - set(chosen))
    chosen += [leftovers[index] for index in rng.choice(len(leftovers), size=extra, replace=False)]

    masks = dict(zip(samples.image_path, samples.mask_path, strict=True))
    for path in sorted(chosen):
        if not _has_mask(masks[path]):
            msg = (
                f"Abnormal image {path} of {category} was chosen as an anomalous shot but has no mask file "
                f"(mask_path {masks[path]!r}): training on real anomalies needs their ground-truth masks; give "
                "the datamodule its masks (Folder: mask_dir), or set anomalous_shots=0."
            )
            raise ValueError(msg)
    return sorted(chosen)


class AnomalousShotsMixin:
    """Move ``anomalous_shots`` abnormal test images, with their masks, to an anomalib datamodule's training set.

    Put it first in the bases, before :class:`~pcsnet_anomalib.data.kshot.KShotMixin` when both are used (so
    the anomalies are added after the k-shot restriction): ``class KShotVisa(AnomalousShotsMixin, KShotMixin,
    Visa)``. The chosen images leave the test and validation sets whatever the split modes, and join the
    training set (``split`` set to the datamodule's training value, ``task`` kept ``segmentation``) unless
    ``train_on_anomalous_shots`` is False. ``anomalous_shot_paths`` holds them (sorted) after setup; they are
    logged and saved in checkpoints (the datamodule's ``state_dict``, merged with the k-shot choice).

    anomalib's models train on whatever the training set holds and do not check for anomalies: give them
    ``train_on_anomalous_shots=False``. This package's one-class models (Pcsnet, Pfm, Pefm) refuse a training
    set with abnormal images.

    Args:
        anomalous_shots: abnormal test images moved to training (PRN: 10); 0 changes nothing.
        anomalous_shots_seed: seeds the choice (:func:`select_anomalous_shots`).
        train_on_anomalous_shots: False removes the chosen images from test and validation without adding them
            to training, so unsupervised models are scored on the same remaining test images.
        **kwargs: every argument of the datamodule class that follows in the bases.
    """

    category: str
    test_data: Any
    train_data: Any

    def __init__(
        self,
        anomalous_shots: int = 0,
        anomalous_shots_seed: int = 0,
        train_on_anomalous_shots: bool = True,
        **kwargs: Any,
    ) -> None:
        check_anomalous_shots(anomalous_shots)
        super().__init__(**kwargs)
        self.anomalous_shots = anomalous_shots
        self.anomalous_shots_seed = anomalous_shots_seed
        self.train_on_anomalous_shots = train_on_anomalous_shots
        self.anomalous_shot_paths: list[str] | None = None
        self._anomalous_shots_data: Any = None  # the chosen rows, between _setup and _create_val_split

    def _setup(self, _stage: str | None = None) -> None:
        """Load the data, then take the chosen anomalies out of the test set before any split is drawn from it."""
        super()._setup(_stage)  # type: ignore[misc]
        self.anomalous_shot_paths = select_anomalous_shots(
            self.test_data, self.anomalous_shots, self.anomalous_shots_seed
        )
        self._anomalous_shots_data = None
        if not self.anomalous_shot_paths:
            return
        chosen = set(self.anomalous_shot_paths)
        paths = self.test_data.samples.image_path.tolist()
        self._anomalous_shots_data = self.test_data.subsample([i for i, path in enumerate(paths) if path in chosen])
        self.test_data = self.test_data.subsample([i for i, path in enumerate(paths) if path not in chosen])
        if not (self.test_data.samples.label_index == 1).any():
            logger.warning("Every abnormal test image of %s is an anomalous shot: none is left to test.", self.category)
        logger.info(
            "%s %s: anomalous_shots=%d, seed=%d, %s: %s",
            type(self).__name__,
            self.category,
            self.anomalous_shots,
            self.anomalous_shots_seed,
            "added to training" if self.train_on_anomalous_shots else "removed from test only",
            ", ".join(self.anomalous_shot_paths),
        )

    def _create_val_split(self) -> None:
        """Draw validation (and the k-shot images) first, then add the chosen anomalies to training."""
        super()._create_val_split()  # type: ignore[misc]
        moved, self._anomalous_shots_data = self._anomalous_shots_data, None
        if moved is None or not self.train_on_anomalous_shots:
            return
        train_split = self.train_data.samples.split.iloc[0] if len(self.train_data) else Split.TRAIN.value
        moved.samples = moved.samples.assign(split=train_split)
        self.train_data = self.train_data + moved
        self.train_data.samples.attrs["task"] = "segmentation"  # pandas keeps attrs through concat only if equal

    def state_dict(self) -> dict[str, Any]:
        """The chosen anomalies (and the parent's choices, e.g. the k-shot images), saved in Lightning checkpoints."""
        return {
            **super().state_dict(),  # type: ignore[misc]
            "anomalous_shots": self.anomalous_shots,
            "anomalous_shots_seed": self.anomalous_shots_seed,
            "train_on_anomalous_shots": self.train_on_anomalous_shots,
            "anomalous_shot_paths": self.anomalous_shot_paths,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Warn when a checkpoint's anomalous shots differ from this datamodule's choice."""
        saved = state_dict.get("anomalous_shot_paths")
        if saved is not None and self.anomalous_shot_paths is not None and saved != self.anomalous_shot_paths:
            logger.warning(
                "The checkpoint was trained with other anomalous shots (%s) than %s chose (%s).",
                ", ".join(saved),
                type(self).__name__,
                ", ".join(self.anomalous_shot_paths),
            )
        super().load_state_dict(state_dict)  # type: ignore[misc]
