"""The few-shot protocol as a data concern: which k normal images train, chosen by a seed.

:func:`select_k_shot` is the one selection rule (a pure function of the dataset, ``k`` and the seed);
:func:`restrict_to` keeps those images of a dataset. Two ways to use them:

- the k-shot datamodules (:class:`KShotMVTecAD`, :class:`KShotMPDD`, :class:`KShotFolder`,
  :class:`KShotPcsnetDemo`, or any anomalib datamodule with :class:`KShotMixin` in front), which choose after
  their validation split, so validation never draws from the k images. ``anomalib benchmark`` builds each
  job's Engine itself (no per-run callbacks), so there ``data.init_args.k_shot`` / ``k_shot_seed`` are grids
  shared by every model;
- the opt-in callback ``pcsnet_anomalib.callbacks.KShotSelection``, for a datamodule you cannot change.

The k-shot datamodules also take the few-real-anomalies option (``anomalous_shots``, ``anomalous_shots_seed``,
``train_on_anomalous_shots``; :mod:`pcsnet_anomalib.data.anomalous_shots`), off by default.
"""

import logging
from typing import Any

import numpy as np
from anomalib.data import MPDD, Folder, MVTecAD

from pcsnet_anomalib.data.anomalous_shots import AnomalousShotsMixin
from pcsnet_anomalib.data.demo import PcsnetDemo
from pcsnet_anomalib.data.resumable import ResumableTrainLoaderMixin

logger = logging.getLogger(__name__)


def check_k_shot(k_shot: int | None) -> None:
    """Raise ``ValueError`` unless ``k_shot`` is a positive number of images or ``None`` (all images)."""
    if k_shot is not None and (isinstance(k_shot, bool) or not isinstance(k_shot, int) or k_shot < 1):
        msg = f"k_shot must be a positive number of images or None (all images), got {k_shot!r}."
        raise ValueError(msg)


def select_k_shot(dataset: Any, k_shot: int | None, seed: int) -> list[str]:
    """Image paths of ``k_shot`` normal images of ``dataset`` (an anomalib dataset), sorted; ``None`` = all of them.

    A pure function of the dataset's normal image paths (as a set), ``k_shot`` and ``seed``: the same arguments
    choose the same images, whatever the order of the samples or any random state.
    """
    check_k_shot(k_shot)
    samples = dataset.samples
    normal_paths = sorted(samples.image_path[samples.label_index == 0].tolist())
    category = getattr(dataset, "category", None) or "this dataset"
    if not normal_paths:
        msg = f"The training set of {category} has no normal images: check the dataset root and category."
        raise ValueError(msg)
    if k_shot is None:
        return normal_paths
    if k_shot > len(normal_paths):
        msg = (
            f"k_shot={k_shot} but the training set of {category} has only {len(normal_paths)} normal "
            f"images: set k_shot to at most {len(normal_paths)}, or None to use all of them."
        )
        raise ValueError(msg)
    chosen = np.random.default_rng(seed).choice(len(normal_paths), size=k_shot, replace=False)
    return sorted(normal_paths[index] for index in chosen)


def restrict_to(dataset: Any, paths: list[str]) -> Any:
    """``dataset`` restricted to the samples whose image path is in ``paths`` (``dataset`` itself if all are)."""
    chosen = set(paths)
    keep = [index for index, path in enumerate(dataset.samples.image_path) if path in chosen]
    return dataset if len(keep) == len(dataset) else dataset.subsample(keep)


class KShotMixin(ResumableTrainLoaderMixin):
    """Restrict an anomalib datamodule's training set to ``k_shot`` normal images after its validation split.

    Put it before the datamodule class in the bases: ``class KShotVisa(KShotMixin, Visa)`` takes every
    argument of ``Visa`` plus ``k_shot`` and ``k_shot_seed`` (jsonargparse follows ``**kwargs`` to the parent,
    so the CLI offers them all; :class:`~pcsnet_anomalib.data.anomalous_shots.AnomalousShotsMixin`, if used,
    goes before it). ``few_shot_paths`` holds the chosen files after setup; they are saved in
    checkpoints (the datamodule's ``state_dict``). The training loader is resumable mid-epoch
    (:class:`~pcsnet_anomalib.data.resumable.ResumableTrainLoaderMixin`).

    Args:
        k_shot: normal training images (the paper: 2, 4, 8); ``None`` keeps all.
        k_shot_seed: seeds the choice.
        **kwargs: every argument of the datamodule class that follows in the bases.
    """

    category: str

    def __init__(self, k_shot: int | None = 8, k_shot_seed: int = 0, **kwargs: Any) -> None:
        check_k_shot(k_shot)
        super().__init__(**kwargs)
        self.k_shot = k_shot
        self.k_shot_seed = k_shot_seed
        self.few_shot_paths: list[str] | None = None

    def _create_val_split(self) -> None:
        """Split validation off first, then keep the k-shot images of what remains for training."""
        super()._create_val_split()  # type: ignore[misc]
        self.few_shot_paths = select_k_shot(self.train_data, self.k_shot, self.k_shot_seed)
        self.train_data = restrict_to(self.train_data, self.few_shot_paths)
        logger.info(
            "%s %s: k_shot=%s, seed=%d: %s",
            type(self).__name__,
            self.category,
            self.k_shot,
            self.k_shot_seed,
            ", ".join(self.few_shot_paths),
        )

    def state_dict(self) -> dict[str, Any]:
        """The chosen training images, saved in Lightning checkpoints."""
        return {"k_shot": self.k_shot, "k_shot_seed": self.k_shot_seed, "few_shot_paths": self.few_shot_paths}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Warn when a checkpoint's training images differ from this datamodule's choice."""
        saved = state_dict.get("few_shot_paths")
        if saved is not None and self.few_shot_paths is not None and saved != self.few_shot_paths:
            logger.warning(
                "The checkpoint was trained on other images (%s) than %s chose (%s).",
                ", ".join(saved),
                type(self).__name__,
                ", ".join(self.few_shot_paths),
            )


class KShotMVTecAD(AnomalousShotsMixin, KShotMixin, MVTecAD):
    """MVTec AD whose training set is ``k_shot`` normal images chosen with ``k_shot_seed`` (plus any anomalous shots).

    Takes every argument of ``anomalib.data.MVTecAD`` plus ``k_shot`` and ``k_shot_seed`` (:class:`KShotMixin`)
    and ``anomalous_shots``, ``anomalous_shots_seed``, ``train_on_anomalous_shots`` (:class:`AnomalousShotsMixin`).
    """


class KShotMPDD(AnomalousShotsMixin, KShotMixin, MPDD):
    """MPDD whose training set is ``k_shot`` normal images chosen with ``k_shot_seed`` (plus any anomalous shots).

    Takes every argument of ``anomalib.data.MPDD`` plus ``k_shot`` and ``k_shot_seed`` (:class:`KShotMixin`)
    and ``anomalous_shots``, ``anomalous_shots_seed``, ``train_on_anomalous_shots`` (:class:`AnomalousShotsMixin`).
    """


class KShotFolder(AnomalousShotsMixin, KShotMixin, Folder):
    """A ``Folder`` dataset whose training set is ``k_shot`` normal images chosen with ``k_shot_seed``.

    Takes every argument of ``anomalib.data.Folder`` plus ``k_shot`` and ``k_shot_seed`` (:class:`KShotMixin`)
    and ``anomalous_shots``, ``anomalous_shots_seed``, ``train_on_anomalous_shots`` (:class:`AnomalousShotsMixin`;
    the defect types are the abnormal images' folders, and anomalous shots need ``mask_dir``).
    """


class KShotPcsnetDemo(AnomalousShotsMixin, KShotMixin, PcsnetDemo):
    """The offline demo data (:class:`PcsnetDemo`) with a ``k_shot`` training set chosen with ``k_shot_seed``.

    Validation is a seeded half of the test folder (``val_split_mode=from_test``), as in ``PcsnetDemo``.

    Takes every argument of :class:`PcsnetDemo` plus ``k_shot`` and ``k_shot_seed`` (:class:`KShotMixin`) and
    ``anomalous_shots``, ``anomalous_shots_seed``, ``train_on_anomalous_shots`` (:class:`AnomalousShotsMixin`).
    """
