"""The resumable training loader: order seeded by (seed, epoch), exact continuation after a saved state."""

import pytest
import torch
from lightning.fabric.utilities.types import _Stateful
from lightning.pytorch import LightningDataModule, Trainer
from torch.utils.data import DataLoader, WeightedRandomSampler

from pcsnet_anomalib.data.resumable import ResumableDataLoader, ResumableTrainLoaderMixin

DATA = list(range(10))


def _epoch(loader: DataLoader, epoch: int) -> list[list[int]]:
    loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
    return [batch.tolist() for batch in loader]


def test_order_depends_on_seed_and_epoch_only() -> None:
    torch.manual_seed(0)
    first = _epoch(ResumableDataLoader(DATA, seed=1, batch_size=3), epoch=0)
    torch.manual_seed(1)  # the global RNG plays no part
    assert _epoch(ResumableDataLoader(DATA, seed=1, batch_size=3), epoch=0) == first
    assert _epoch(ResumableDataLoader(DATA, seed=1, batch_size=3), epoch=1) != first
    assert _epoch(ResumableDataLoader(DATA, seed=2, batch_size=3), epoch=0) != first
    assert sorted(index for batch in first for index in batch) == DATA


def test_iterating_leaves_the_global_rng_alone() -> None:
    """A plain loader draws its workers' base seed from torch's RNG at each epoch, so a resume would shift it."""
    before = torch.get_rng_state()
    _epoch(ResumableDataLoader(DATA, seed=0, batch_size=3), epoch=0)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("served", [0, 1, 3, 4])
def test_a_loaded_state_serves_exactly_the_rest_of_the_epoch(served: int) -> None:
    loader = ResumableDataLoader(DATA, seed=0, batch_size=3)  # 4 batches, the last one short
    loader.sampler.set_epoch(2)  # type: ignore[attr-defined]
    batches = iter(loader)
    seen = [next(batches).tolist() for _ in range(served)]
    state = loader.state_dict()
    assert state == {"epoch": 2, "batches_served": served}

    resumed = ResumableDataLoader(DATA, seed=0, batch_size=3)
    resumed.load_state_dict(state)
    assert seen + _epoch(resumed, epoch=2) == _epoch(ResumableDataLoader(DATA, seed=0, batch_size=3), epoch=2)
    assert len(_epoch(resumed, epoch=2)) == 4, "the skip applies to the resumed epoch only"


def test_a_state_from_a_finished_epoch_does_not_skip_the_next_one() -> None:
    loader = ResumableDataLoader(DATA, seed=0, batch_size=5)
    _epoch(loader, epoch=0)
    resumed = ResumableDataLoader(DATA, seed=0, batch_size=5)
    resumed.load_state_dict(loader.state_dict())
    assert len(_epoch(resumed, epoch=1)) == 2


def test_conversion_keeps_the_loader_settings_and_is_stateful_for_lightning() -> None:
    plain = DataLoader(DATA, batch_size=4, shuffle=True, drop_last=True, collate_fn=list)
    resumable = ResumableDataLoader.from_dataloader(plain, seed=0)
    assert isinstance(resumable, _Stateful)
    assert (resumable.batch_size, resumable.drop_last, resumable.collate_fn) == (4, True, list)
    assert len(resumable) == len(plain) == 2
    ordered = ResumableDataLoader.from_dataloader(DataLoader(DATA, batch_size=4), seed=0)
    assert [batch.tolist() for batch in ordered] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_worker_processes_serve_the_same_resumable_epoch() -> None:
    """Anomalib's datamodules default to several loader workers."""
    plain = DataLoader(DATA, batch_size=3, shuffle=True, num_workers=2, prefetch_factor=1)
    with_workers = ResumableDataLoader.from_dataloader(plain, seed=4)
    assert (with_workers.num_workers, with_workers.prefetch_factor) == (2, 1)
    batches = iter(with_workers)
    first = next(batches).tolist()
    resumed = ResumableDataLoader(DATA, seed=4, batch_size=3)
    resumed.load_state_dict(with_workers.state_dict())
    assert [first, *_epoch(resumed, epoch=0)] == _epoch(ResumableDataLoader(DATA, seed=4, batch_size=3), epoch=0)


def test_a_custom_sampler_is_kept() -> None:
    weighted = DataLoader(DATA, sampler=WeightedRandomSampler([1.0] * 10, num_samples=10))
    assert ResumableDataLoader.from_dataloader(weighted, seed=0) is weighted


class _DataModule(LightningDataModule):
    def __init__(self, seed: int | None) -> None:
        super().__init__()
        self.seed = seed

    def train_dataloader(self) -> DataLoader:
        return DataLoader(DATA, batch_size=2, shuffle=True)


class _ResumableDataModule(ResumableTrainLoaderMixin, _DataModule):
    pass


@pytest.mark.parametrize(("seed", "expected_seed"), [(3, 3), (None, 0)])
def test_the_mixin_makes_the_datamodules_loader_resumable(seed: int | None, expected_seed: int) -> None:
    datamodule = _ResumableDataModule(seed)
    datamodule.trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    loader = datamodule.train_dataloader()
    assert isinstance(loader, ResumableDataLoader)
    assert loader.batch_size == 2
    assert _epoch(loader, epoch=0) == _epoch(ResumableDataLoader(DATA, seed=expected_seed, batch_size=2), epoch=0)
    assert type(_DataModule(seed).train_dataloader()) is DataLoader  # the parent class is left as it is


def test_the_mixin_leaves_distributed_loaders_to_lightning() -> None:
    class _TwoRanks:
        world_size = 2

    datamodule = _ResumableDataModule(0)
    datamodule.trainer = _TwoRanks()  # type: ignore[assignment]
    assert type(datamodule.train_dataloader()) is DataLoader
