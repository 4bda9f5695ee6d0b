"""Bad inputs fail early with a message saying what to change (no training needed for these)."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.cli import AnomalibCLI
from PIL import Image

from pcsnet_anomalib import Pcsnet
from pcsnet_anomalib.data.validation import check_image_files
from pcsnet_anomalib.models.pcsnet.loss import PcsnetLoss
from pcsnet_anomalib.models.pcsnet.torch_model import PcsnetModel
from tests.conftest import TINY_MODEL, state_differences


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(array, mode).save(path)
    return path


def test_check_image_files_names_every_unreadable_file(tmp_path: Path) -> None:
    good = _png(tmp_path / "good.png", np.zeros((8, 8, 3), np.uint8))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:40])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"no image here")
    with pytest.raises(ValueError, match="2 image file") as error:
        check_image_files([str(good), str(truncated), str(garbage)])
    assert str(truncated) in str(error.value)
    assert str(garbage) in str(error.value)
    assert f"{good} (" not in str(error.value)


def test_check_image_files_warns_about_16_bit_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    grey = _png(tmp_path / "grey.png", np.zeros((8, 8), np.uint8))
    rgba = _png(tmp_path / "rgba.png", np.zeros((8, 8, 4), np.uint8), "RGBA")
    with caplog.at_level(logging.WARNING):
        check_image_files([str(grey), str(rgba)])
    assert not caplog.records
    wide = _png(tmp_path / "wide.png", np.full((8, 8), 40000, np.uint16))
    with caplog.at_level(logging.WARNING):
        check_image_files([str(wide)])
    assert "wide.png" in caplog.text
    assert "clips them at 255" in caplog.text


def test_misspelt_argument_is_named() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'k_sht'"):
        Pcsnet(k_sht=4)


def test_misspelt_cli_argument_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    import pcsnet_anomalib  # noqa: F401  (registers Pcsnet with anomalib's CLI)

    with pytest.raises(SystemExit) as exit_info:
        AnomalibCLI(args=["fit", "--model", "Pcsnet", "--model.k_sht", "4", "--data", "MVTecAD"])
    assert exit_info.value.code == 2
    assert "Option 'k_sht' is not accepted" in capsys.readouterr().err


def test_unknown_preset_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"Unknown category 'bottel' .* valid categories: \['bottle'"):
        Pcsnet(**TINY_MODEL, synthesis_preset="mvtec_ad/bottel")


def test_seed_alone_decides_the_initial_weights() -> None:
    torch.manual_seed(1)
    first = Pcsnet(**TINY_MODEL, seed=7).model.state_dict()
    state = torch.get_rng_state()
    second = Pcsnet(**TINY_MODEL, seed=7).model.state_dict()
    assert torch.equal(torch.get_rng_state(), state), "building the model must not move the global RNG"
    other = Pcsnet(**TINY_MODEL, seed=8).model.state_dict()
    assert not state_differences(first, second)
    assert not torch.equal(first["cas.classifier.3.weight"], other["cas.classifier.3.weight"])
    assert "synthesizer._extra_state" in state_differences(first, other)  # the random streams follow the seed too


def test_zero_variance_images_give_finite_distances_losses_and_maps() -> None:
    torch.manual_seed(0)
    model = PcsnetModel(**dict(TINY_MODEL.items()))
    images = torch.full((2, 3, 64, 64), 0.5)
    model.train()
    with torch.no_grad():
        model.initialize_prototypes(model.describe(images).sum(dim=0), 2)
    mixed = torch.tensor([True, False])
    outputs = model.training_outputs(images, images.clone(), mixed)
    losses = PcsnetLoss()(outputs, model.radius, torch.zeros(2, 1, 64, 64), mixed)
    for name, value in losses.items():
        assert torch.isfinite(value), name
    assert torch.isfinite(outputs.normal_nearest).all()
    assert torch.isfinite(outputs.mixed_nearest).all()
    model.eval()
    prediction = model(images)
    assert torch.isfinite(prediction.anomaly_map).all()
    assert torch.isfinite(prediction.pred_score).all()


@pytest.mark.parametrize(
    ("preset", "rotation_sensitive", "reduced"),
    [
        ("mvtec_ad/screw", None, True),
        ("mvtec_ad/bottle", None, False),
        ("mvtec_ad/screw", False, False),
        (None, None, False),
    ],
)
def test_the_preset_decides_the_descriptor_unless_told(
    preset: str | None, rotation_sensitive: bool | None, reduced: bool
) -> None:
    """The paper's rotation-sensitive categories get the channel-halving descriptor; an explicit choice wins."""
    model = Pcsnet(**TINY_MODEL, synthesis_preset=preset, rotation_sensitive=rotation_sensitive)
    assert (model.model.descriptor.reducers is not None) == reduced
    assert model.model.synthesizer.preset_name == preset
