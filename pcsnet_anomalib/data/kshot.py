"""Datamodules with a k-shot training set, so every model of a benchmark trains on the same k images.

``anomalib benchmark`` builds each job's Engine itself (no per-run callbacks), so the k-shot
choice has to live in the datamodule there: ``data.init_args.k_shot`` and ``k_shot_seed`` can be
grids shared by every model. The choice is :class:`~pcsnet_anomalib.callbacks.KShotSelection`'s,
applied after the validation split, so validation never draws from the k images.
"""

import logging
from pathlib import Path

from anomalib.data import MPDD, MVTecAD
from anomalib.data.utils import TestSplitMode, ValSplitMode

from pcsnet_anomalib.callbacks import KShotSelection
from pcsnet_anomalib.data.demo import PcsnetDemo

logger = logging.getLogger(__name__)


class KShotMixin:
    """Restrict an anomalib datamodule's training set to ``k_shot`` normal images after its validation split.

    Put it before the datamodule class in the bases and call :meth:`_init_kshot` in ``__init__``.
    ``few_shot_paths`` holds the chosen files after setup; a model's own k-shot selection
    (``Pcsnet(k_shot=...)``) then keeps them instead of choosing again.
    """

    category: str

    def _init_kshot(self, k_shot: int | None, k_shot_seed: int) -> None:
        self.selection = KShotSelection(k_shot=k_shot, seed=k_shot_seed)
        self.few_shot_paths: list[str] | None = None

    def _create_val_split(self) -> None:
        """Split validation off first, then keep the k-shot images of what remains for training."""
        super()._create_val_split()  # type: ignore[misc]
        self.train_data = self.selection.subsample(self.train_data)
        self.few_shot_paths = self.selection.selected_paths
        logger.info(
            "%s %s: k_shot=%s, seed=%d: %s",
            type(self).__name__,
            self.category,
            self.selection.k_shot,
            self.selection.seed,
            ", ".join(self.few_shot_paths),
        )


class KShotMVTecAD(KShotMixin, MVTecAD):
    """MVTec AD whose training set is ``k_shot`` normal images chosen with ``k_shot_seed``."""

    def __init__(
        self,
        root: Path | str = "./datasets/MVTecAD",
        category: str = "bottle",
        k_shot: int | None = 8,
        k_shot_seed: int = 0,
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 8,
        val_split_mode: ValSplitMode | str = ValSplitMode.SAME_AS_TEST,
        val_split_ratio: float = 0.5,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            root=root,
            category=category,
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            val_split_mode=val_split_mode,
            val_split_ratio=val_split_ratio,
            seed=seed,
        )
        self._init_kshot(k_shot, k_shot_seed)


class KShotMPDD(KShotMixin, MPDD):
    """MPDD whose training set is ``k_shot`` normal images chosen with ``k_shot_seed``."""

    def __init__(
        self,
        root: Path | str = "./datasets/MPDD",
        category: str = "bracket_black",
        k_shot: int | None = 8,
        k_shot_seed: int = 0,
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 8,
        val_split_mode: ValSplitMode | str = ValSplitMode.SAME_AS_TEST,
        val_split_ratio: float = 0.5,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            root=root,
            category=category,
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            val_split_mode=val_split_mode,
            val_split_ratio=val_split_ratio,
            seed=seed,
        )
        self._init_kshot(k_shot, k_shot_seed)


class KShotPcsnetDemo(KShotMixin, PcsnetDemo):
    """The offline demo data (:class:`PcsnetDemo`) with a ``k_shot`` training set chosen with ``k_shot_seed``.

    Validation is a seeded half of the test folder (``val_split_mode=from_test``), as in ``PcsnetDemo``.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        category: str = "brick",
        k_shot: int | None = 8,
        k_shot_seed: int = 0,
        train_batch_size: int = 2,
        eval_batch_size: int = 8,
        num_workers: int = 0,
        test_split_mode: TestSplitMode | str = TestSplitMode.FROM_DIR,
        test_split_ratio: float = 0.2,
        val_split_mode: ValSplitMode | str = ValSplitMode.FROM_TEST,
        val_split_ratio: float = 0.5,
        seed: int | None = 0,
    ) -> None:
        super().__init__(
            root=root,
            category=category,
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            test_split_mode=test_split_mode,
            test_split_ratio=test_split_ratio,
            val_split_mode=val_split_mode,
            val_split_ratio=val_split_ratio,
            seed=seed,
        )
        self._init_kshot(k_shot, k_shot_seed)
