"""PRN's anomaly generator: seeded and checkpointed, seen anomalies from the real masks, unseen Perlin anomalies."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pcsnet_anomalib.models.prn import Kind, PrnAnomalyGenerator, default_texture_folder
from pcsnet_anomalib.models.prn.seen_augmenter import augment_seen

SIZE = 32


@pytest.fixture(scope="module")
def textures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("textures")
    rng = np.random.default_rng(0)
    for index in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return folder


def _bank() -> tuple[torch.Tensor, torch.Tensor]:
    """Two real anomalies: distinct images and masks (a square and a bar)."""
    images = torch.stack([torch.full((3, SIZE, SIZE), 0.9), torch.full((3, SIZE, SIZE), 0.1)])
    masks = torch.zeros(2, 1, SIZE, SIZE)
    masks[0, :, 4:12, 4:12] = 1
    masks[1, :, 20:22, 2:30] = 1
    return images, masks


def _batch(count: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images = torch.rand(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 0.2 + 0.4
    return images, torch.zeros(count, 1, SIZE, SIZE), torch.zeros(count, dtype=torch.long)


def _generator(textures: Path, seed: int = 0, **kwargs: float) -> PrnAnomalyGenerator:
    generator = PrnAnomalyGenerator(seed=seed, anomaly_source_path=textures, **kwargs)
    generator.set_seen_bank(*_bank(), num_normal=8)
    return generator


def test_same_seed_same_batch_and_the_global_rng_is_untouched(textures: Path) -> None:
    state = torch.get_rng_state()
    first = _generator(textures)(*_batch())
    second = _generator(textures)(*_batch())
    assert torch.equal(torch.get_rng_state(), state)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    other = _generator(textures, seed=1)(*_batch())
    assert not torch.equal(first[0], other[0])


def test_seen_anomalies_use_the_real_masks(textures: Path) -> None:
    generator = _generator(textures, p_normal=0.0, p_seen=1.0, p_unseen=0.0)
    images, masks, labels = _batch(16)
    bank_images, bank_masks = _bank()
    out_images, out_masks, kinds = generator(images, masks, labels)
    assert set(kinds.tolist()) <= {Kind.SEEN_DIRECT, Kind.SEEN_PASTED}
    for image, source, mask, kind in zip(out_images, images, out_masks, kinds.tolist(), strict=True):
        if kind == Kind.SEEN_DIRECT:  # a bank anomaly as it is
            assert any(torch.equal(mask, bank) for bank in bank_masks)
            assert any(torch.equal(image, bank) for bank in bank_images)
        else:  # an augmented bank anomaly, pasted where its (non-empty) mask is set and nowhere else
            assert mask.any()
            assert torch.equal(image[:, mask[0] == 0], source[:, mask[0] == 0])
            assert not torch.equal(image[:, mask[0] == 1], source[:, mask[0] == 1])


def test_the_seen_augmenter_is_seeded_and_keeps_a_defect() -> None:
    images, masks = _bank()
    for seed in range(20):
        image, mask = augment_seen(images[1], masks[1], torch.Generator().manual_seed(seed))
        again = augment_seen(images[1], masks[1], torch.Generator().manual_seed(seed))
        assert torch.equal(image, again[0])
        assert torch.equal(mask, again[1])
        assert mask.any()
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert image.shape == images[1].shape
        assert 0 <= image.min() <= image.max() <= 1


def test_pasted_defects_off_the_object_move_onto_it(textures: Path) -> None:
    """A bright object on the left half of a dark image: a defect on the right half is moved onto the object."""
    generator = _generator(textures, p_normal=0.0, p_seen=1.0, p_unseen=0.0, reuse_times=0)
    generator.set_background((0.0, 60.0))  # object: mean brightness more than 60 (of 255) above black
    images = torch.zeros(8, 3, SIZE, SIZE)
    images[:, :, :, : SIZE // 2] = 0.8
    bank_images, bank_masks = _bank()
    bank_masks = torch.zeros_like(bank_masks)
    bank_masks[:, :, 10:16, 24:30] = 1  # on the background
    generator.set_seen_bank(bank_images, bank_masks, num_normal=8)
    _, masks, kinds = generator(images, torch.zeros(8, 1, SIZE, SIZE), torch.zeros(8, dtype=torch.long))
    assert (kinds == Kind.SEEN_PASTED).all()
    on_object = masks[:, 0, :, : SIZE // 2].flatten(1).sum(1) / masks.flatten(1).sum(1)
    assert (on_object > 2 / 3).all(), on_object
    generator.seen_in_foreground = False
    _, masks, _ = generator(images, torch.zeros(8, 1, SIZE, SIZE), torch.zeros(8, dtype=torch.long))
    assert (masks[:, 0, :, : SIZE // 2].flatten(1).sum(1) / masks.flatten(1).sum(1) < 2 / 3).any()


def test_direct_reuse_share_follows_reuse_times(textures: Path) -> None:
    generator = _generator(textures, reuse_times=1)  # 1 * 2 anomalies / (8 // 2) normal = 0.5
    assert generator.p_direct == pytest.approx(0.5)
    assert _generator(textures).p_direct == 1.0  # 5 * 2 / 4, capped


def test_real_anomalies_of_the_batch_are_kept(textures: Path) -> None:
    images, masks, labels = _batch(4)
    masks[1, :, :4, :4] = 1
    labels[1] = 1
    out_images, out_masks, kinds = _generator(textures)(images, masks, labels)
    assert kinds[1] == Kind.REAL
    assert torch.equal(out_images[1], images[1])
    assert torch.equal(out_masks[1], masks[1])


def test_unseen_anomalies_have_masks_and_without_a_bank_replace_seen_ones(textures: Path) -> None:
    generator = PrnAnomalyGenerator(seed=0, p_normal=0.0, p_seen=0.5, p_unseen=0.5, anomaly_source_path=textures)
    images, masks, labels = _batch(4)
    out_images, out_masks, kinds = generator(images, masks, labels)
    assert (kinds == Kind.UNSEEN).all()  # no real anomalies: no seen ones
    assert (out_masks.flatten(1).sum(1) > 0).all()
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}
    assert out_images.shape == images.shape


def test_proportions_are_two_to_one_to_one(textures: Path) -> None:
    generator = _generator(textures, reuse_times=0)
    draws = torch.tensor([generator._choose() for _ in range(4000)])
    normal, seen = (draws == Kind.NORMAL).float().mean(), (draws == Kind.SEEN_PASTED).float().mean()
    assert normal.item() == pytest.approx(0.5, abs=0.03)
    assert seen.item() == pytest.approx(0.25, abs=0.03)
    assert (draws == Kind.UNSEEN).float().mean().item() == pytest.approx(0.25, abs=0.03)


def test_state_dict_round_trip_continues_the_stream(textures: Path) -> None:
    generator = _generator(textures)
    generator(*_batch())
    restored = _generator(textures, seed=7)
    restored.load_state_dict(generator.state_dict())
    for a, b in zip(generator(*_batch()), restored(*_batch()), strict=True):
        assert torch.equal(a, b)


def test_default_textures_are_scikit_image_photographs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("skimage")
    monkeypatch.setenv("PCSNET_DEMO_ROOT", str(tmp_path))
    folder = default_texture_folder()
    assert folder is not None
    assert folder.parent == tmp_path
    assert len(list(folder.glob("*.png"))) >= 3


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="summing to 1"):
        PrnAnomalyGenerator(p_normal=0.5, p_seen=0.5, p_unseen=0.5)
    with pytest.raises(ValueError, match="reuse_times"):
        PrnAnomalyGenerator(reuse_times=-1)
    with pytest.raises(ValueError, match="not a folder"):
        PrnAnomalyGenerator(anomaly_source_path=tmp_path / "missing").perlin()
