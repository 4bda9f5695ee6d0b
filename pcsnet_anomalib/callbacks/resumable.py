"""Train from a loader that resumes mid-epoch, so an interrupted fit ends with the same weights.

anomalib's datamodules build a plain shuffling ``DataLoader`` for training; Lightning can resume
it only at epoch boundaries. While fitting, this callback has the datamodule hand out the
:class:`~pcsnet_anomalib.data.resumable.ResumableDataLoader` equivalent instead (same dataset,
batch size, workers and collate function; order seeded by ``seed`` and the epoch), and gives the
datamodule back unchanged when the fit ends.
"""

import logging
from collections.abc import Callable
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader

from pcsnet_anomalib.data.resumable import ResumableDataLoader

logger = logging.getLogger(__name__)


class ResumableTrainLoader(Callback):
    """Make the datamodule's training loader resumable mid-epoch while fitting (single process).

    Under a distributed strategy Lightning swaps in its own ``DistributedSampler`` (seeded by the
    epoch too), which resumes at epoch boundaries only; the loader is then left alone.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._replaced: dict[int, Any] = {}  # id(datamodule) -> its own ``train_dataloader`` attribute, if any

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Wrap ``trainer.datamodule.train_dataloader`` for the fit."""
        del pl_module
        datamodule = trainer.datamodule
        if stage != "fit" or datamodule is None or trainer.world_size > 1 or id(datamodule) in self._replaced:
            return
        self._replaced[id(datamodule)] = datamodule.__dict__.get("train_dataloader")
        datamodule.train_dataloader = self._resumable(datamodule.train_dataloader)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Give the datamodule its own ``train_dataloader`` back."""
        del pl_module, stage
        datamodule = trainer.datamodule
        if datamodule is None or id(datamodule) not in self._replaced:
            return
        own = self._replaced.pop(id(datamodule))
        if own is None:
            del datamodule.train_dataloader
        else:
            datamodule.train_dataloader = own

    def _resumable(self, train_dataloader: Callable[[], Any]) -> Callable[[], Any]:
        def resumable_train_dataloader() -> Any:
            loader = train_dataloader()
            if not isinstance(loader, DataLoader):
                return loader
            resumable = ResumableDataLoader.from_dataloader(loader, seed=self.seed)
            if resumable is loader:
                logger.info("Training loader has a custom sampler: kept, resumable at epoch boundaries only.")
            return resumable

        return resumable_train_dataloader
