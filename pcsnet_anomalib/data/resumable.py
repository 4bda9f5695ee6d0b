"""A training loader that Lightning can checkpoint and resume part-way through an epoch.

A plain ``DataLoader(shuffle=True)`` draws each epoch's order from torch's global RNG and has no
state, so Lightning restarts a resumed epoch from its first batch: the resumed run sees other
batches than the interrupted one. Here the order of an epoch is a function of ``(seed, epoch)``
alone (so are the workers' base seeds, which a plain loader draws from the global RNG when an
epoch starts, shifting it on resume), and the loader records how many batches of the epoch it
served: Lightning saves that with ``state_dict`` in every checkpoint and restores it with
``load_state_dict``, so a resumed epoch serves exactly the batches that were left.
"""

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler, SequentialSampler

logger = logging.getLogger(__name__)

# Settings of a DataLoader carried over by ResumableDataLoader.from_dataloader (all but the sampling).
_LOADER_SETTINGS = (
    "num_workers",
    "collate_fn",
    "pin_memory",
    "timeout",
    "worker_init_fn",
    "multiprocessing_context",
    "persistent_workers",
    "pin_memory_device",
    "in_order",
)


class EpochSeededSampler(Sampler[int]):
    """Indices ``0..num_samples-1``, shuffled by ``(seed, epoch)`` when ``shuffle``; can start part-way.

    Lightning calls :meth:`set_epoch` before every epoch, as for a ``DistributedSampler``.
    """

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.first_index = 0  # position in the epoch's order where the next iteration starts

    def set_epoch(self, epoch: int) -> None:
        """Select the order of ``epoch``."""
        self.epoch = epoch

    def order(self) -> list[int]:
        """The full order of the current epoch."""
        if not self.shuffle:
            return list(range(self.num_samples))
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples).tolist()

    def __iter__(self) -> Iterator[int]:
        """The indices of the current epoch from ``first_index`` on."""
        return iter(self.order()[self.first_index :])

    def __len__(self) -> int:
        """All indices of an epoch (Lightning counts the batches of a full epoch)."""
        return self.num_samples


class ResumableDataLoader(DataLoader):
    """``DataLoader`` over an :class:`EpochSeededSampler`, resumable mid-epoch through Lightning's checkpoints.

    Example:
        >>> loader = ResumableDataLoader(list(range(10)), seed=0, batch_size=4)
        >>> batches = iter(loader)
        >>> first = next(batches)
        >>> resumed = ResumableDataLoader(list(range(10)), seed=0, batch_size=4)
        >>> resumed.load_state_dict(loader.state_dict())
        >>> [batch.tolist() for batch in resumed] == [batch.tolist() for batch in batches]
        True
    """

    def __init__(self, dataset: Any, seed: int, shuffle: bool = True, **kwargs: Any) -> None:
        sampler = EpochSeededSampler(len(dataset), seed=seed, shuffle=shuffle)
        super().__init__(dataset, sampler=sampler, generator=torch.Generator(), **kwargs)
        self._batches_served = 0
        self._resume: tuple[int, int] | None = None  # (epoch, batches served) from load_state_dict

    @classmethod
    def from_dataloader(cls, loader: DataLoader, seed: int) -> "DataLoader":
        """The resumable equivalent of ``loader``; ``loader`` itself if its sampling is custom.

        Only the plain random or sequential sampling of ``DataLoader(shuffle=...)`` is replaced;
        a custom sampler or batch sampler is the user's choice and is kept.
        """
        if type(loader.sampler) not in {RandomSampler, SequentialSampler} or type(loader.batch_sampler) is not (
            BatchSampler
        ):
            return loader
        settings = {name: getattr(loader, name) for name in _LOADER_SETTINGS if hasattr(loader, name)}
        if loader.num_workers > 0:
            settings["prefetch_factor"] = loader.prefetch_factor
        return cls(
            loader.dataset,
            seed=seed,
            shuffle=isinstance(loader.sampler, RandomSampler),
            batch_size=loader.batch_size,
            drop_last=loader.drop_last,
            **settings,
        )

    def __iter__(self) -> Iterator[Any]:
        """Serve the current epoch's batches, from where a loaded state left off."""
        sampler = self.sampler
        assert isinstance(sampler, EpochSeededSampler)
        start = 0
        if self._resume is not None and self._resume[0] == sampler.epoch:
            start = self._resume[1]
        self._resume = None
        self.generator.manual_seed(int(np.random.SeedSequence([sampler.seed, sampler.epoch]).generate_state(1)[0]))
        sampler.first_index = start * self.batch_size
        self._batches_served = start
        for batch in super().__iter__():
            self._batches_served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Where the current epoch stands: its number and the batches already served."""
        sampler = self.sampler
        assert isinstance(sampler, EpochSeededSampler)
        return {"epoch": sampler.epoch, "batches_served": self._batches_served}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Make the next iteration of epoch ``state_dict["epoch"]`` skip the batches already served."""
        self._resume = (state_dict["epoch"], state_dict["batches_served"])


class ResumableTrainLoaderMixin:
    """Datamodule mixin: the training loader is a :class:`ResumableDataLoader` (order seeded, resumable mid-epoch).

    Put it before an anomalib datamodule class in the bases. The training order of each epoch follows from the
    datamodule's ``seed`` (0 when it is ``None``) and the epoch alone, and Lightning's checkpoints record the
    position in the epoch, so an interrupted fit resumes with exactly the batches that were left. Under a
    distributed strategy Lightning's ``DistributedSampler`` (seeded by the epoch too) is used instead; it resumes
    at epoch boundaries only. A datamodule whose loader has a custom sampler keeps it.
    """

    seed: int | None
    trainer: Any

    def train_dataloader(self) -> Any:
        """The parent's training loader, made resumable."""
        loader = super().train_dataloader()  # type: ignore[misc]
        distributed = self.trainer is not None and self.trainer.world_size > 1
        if distributed or not isinstance(loader, DataLoader):
            return loader
        resumable = ResumableDataLoader.from_dataloader(loader, seed=self.seed if self.seed is not None else 0)
        if resumable is loader:
            logger.info("Training loader has a custom sampler: kept, resumable at epoch boundaries only.")
        return resumable
