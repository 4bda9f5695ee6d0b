"""MVTec AD with a k-shot training set, so every model of a benchmark trains on the same k images.

``anomalib benchmark`` builds each job's Engine itself (no per-run callbacks), so the k-shot
choice has to live in the datamodule there: ``data.init_args.k_shot`` and ``k_shot_seed`` can be
grids shared by every model. The choice is :class:`~pcsnet_anomalib.callbacks.KShotSelection`'s,
applied after the validation split, so validation never draws from the k images.
"""

import logging
from pathlib import Path

from anomalib.data import MVTecAD
from anomalib.data.utils import ValSplitMode

from pcsnet_anomalib.callbacks import KShotSelection

logger = logging.getLogger(__name__)


class KShotMVTecAD(MVTecAD):
    """MVTec AD whose training set is ``k_shot`` normal images chosen with ``k_shot_seed``.

    ``few_shot_paths`` holds the chosen files after setup; a model's own k-shot selection
    (``Pcsnet(k_shot=...)``) then keeps them instead of choosing again.
    """

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
        self.selection = KShotSelection(k_shot=k_shot, seed=k_shot_seed)
        self.few_shot_paths: list[str] | None = None

    def _create_val_split(self) -> None:
        """Split validation off first, then keep the k-shot images of what remains for training."""
        super()._create_val_split()
        self.train_data = self.selection.subsample(self.train_data)
        self.few_shot_paths = self.selection.selected_paths
        logger.info(
            "KShotMVTecAD %s: k_shot=%s, seed=%d: %s",
            self.category,
            self.selection.k_shot,
            self.selection.seed,
            ", ".join(self.few_shot_paths),
        )
