"""Pfm and Pefm: bad arguments fail at construction saying what to change; anomalib's lookups find both.

No training needed for these.
"""

import pytest
import torch
from anomalib.cli import AnomalibCLI
from anomalib.models import get_model

from pcsnet_anomalib import Pefm, Pfm
from pcsnet_anomalib.models.components import IncompatibleCheckpointError
from pcsnet_anomalib.models.pfm import torch_model
from pcsnet_anomalib.models.pfm.torch_model import FeatureMapping, position_encoding_2d
from tests.conftest import state_differences

TINY_PFM = {"source_backbone": "resnet18", "target_backbone": "resnet18", "pre_trained": False}
MODEL_CLASSES = {"Pfm": Pfm, "Pefm": Pefm}
NAMES = sorted(MODEL_CLASSES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("latent_dims", [(8, 16), (8, 16, 32, 64), (8, 0, 32)])
def test_latent_dims_need_one_positive_width_per_layer(name: str, latent_dims: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"latent_dims \[.*\] must give one positive width per layer of \['layer1'"):
        MODEL_CLASSES[name](**TINY_PFM, latent_dims=latent_dims)


@pytest.mark.parametrize("name", NAMES)
def test_learning_rates_need_one_rate_per_layer(name: str) -> None:
    with pytest.raises(ValueError, match=r"learning_rates \[0\.001, 0\.001\] must give one rate per layer"):
        MODEL_CLASSES[name](**TINY_PFM, latent_dims=(8, 16, 32), learning_rates=(1e-3, 1e-3))


def test_position_encoding_needs_widths_that_are_multiples_of_4() -> None:
    with pytest.raises(ValueError, match="needs a multiple of 4 channels, got 66"):
        position_encoding_2d(66, 2, 2)
    for source, target in ((66, 64), (64, 30)):
        with pytest.raises(ValueError, match=f"got {source if source % 4 else target}.*position_encoding=False"):
            FeatureMapping(source, target, 8, position_encoding=True)
        FeatureMapping(source, target, 8, position_encoding=False)  # without the encoding any width is fine


def test_pefm_refuses_a_backbone_width_not_a_multiple_of_4_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    """No timm CNN we found has such widths at its feature levels: widen the extractor's reported widths by 2."""
    build = torch_model.build_feature_extractor

    def odd_widths(*args: object, **kwargs: object) -> object:
        extractor = build(*args, **kwargs)  # type: ignore[arg-type]
        extractor.out_dims = [dim + 2 for dim in extractor.out_dims]
        return extractor

    monkeypatch.setattr(torch_model, "build_feature_extractor", odd_widths)
    with pytest.raises(ValueError, match="needs a multiple of 4 channels, got 66"):
        Pefm(**TINY_PFM, latent_dims=(8, 16, 32))
    assert Pfm(**TINY_PFM, latent_dims=(8, 16, 32)).model.mappings[0].source_encoder[0].in_channels == 66


@pytest.mark.parametrize("name", NAMES)
def test_backbones_with_different_strides_are_refused_naming_the_strides(name: str) -> None:
    """Lite0's blocks.0 and blocks.1 are at strides 2 and 4, MobileNetV3-Small's at 4 and 8."""
    with pytest.raises(ValueError, match=r"strides \[2, 4\] in tf_efficientnet_lite0 but \[4, 8\] in mobilenetv3"):
        MODEL_CLASSES[name](
            source_backbone="tf_efficientnet_lite0",
            target_backbone="mobilenetv3_small_050",
            layers=("blocks.0", "blocks.1"),
            latent_dims=(8, 16),
            learning_rates=(1e-3, 1e-3),
            pre_trained=False,
        )


@pytest.mark.parametrize("name", NAMES)
def test_wrong_image_shapes_are_refused_with_the_size_needed(name: str) -> None:
    model = MODEL_CLASSES[name](**TINY_PFM, latent_dims=(8, 16, 32)).model.eval()
    with pytest.raises(ValueError, match=r"\(8, 40\) px are smaller than the deepest level's stride \(16\)"):
        model(torch.rand(1, 3, 8, 40))
    with pytest.raises(ValueError, match=r"Expected images of shape \(B, 3, H, W\), got \(1, 1, 32, 32\)"):
        model(torch.rand(1, 1, 32, 32))


@pytest.mark.parametrize("name", NAMES)
def test_seed_alone_decides_the_initial_weights(name: str) -> None:
    cls = MODEL_CLASSES[name]
    torch.manual_seed(1)
    first = cls(**TINY_PFM, latent_dims=(8, 16, 32), seed=7).model.state_dict()
    state = torch.get_rng_state()
    second = cls(**TINY_PFM, latent_dims=(8, 16, 32), seed=7).model.state_dict()
    assert torch.equal(torch.get_rng_state(), state), "building the model must not move the global RNG"
    other = cls(**TINY_PFM, latent_dims=(8, 16, 32), seed=8).model.state_dict()
    assert not state_differences(first, second)
    assert any(name.startswith("mappings.") for name in state_differences(first, other))


# Registration: list_models() and get_model(name) with default arguments are covered for every registered model by
# tests/integration/test_model_contract.py; the class-path form and the CLI's help are not.


@pytest.mark.parametrize("name", NAMES)
def test_get_model_finds_the_model_by_name_and_by_class_path(name: str) -> None:
    tiny = {**TINY_PFM, "latent_dims": [8, 16, 32]}
    by_name = get_model(name.lower(), **tiny)
    by_class_path = get_model({"class_path": name, "init_args": tiny})
    assert type(by_name) is type(by_class_path) is MODEL_CLASSES[name]
    assert by_class_path.hparams["latent_dims"] == [8, 16, 32]
    assert by_name.hparams["position_encoding"] is (name == "Pefm")


@pytest.mark.parametrize("name", NAMES)
def test_cli_help_lists_the_arguments(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``--model.help Pefm`` (``train --model Pefm --help`` prints the train command's help, without the model's)."""
    with pytest.raises(SystemExit) as exit_info:
        AnomalibCLI(args=["train", "--model.help", name])
    assert exit_info.value.code == 0
    output = capsys.readouterr().out
    for argument in ("source_backbone", "target_backbone", "latent_dims", "position_encoding", "learning_rates"):
        assert f"--model.{argument}" in output, argument


@pytest.mark.parametrize("name", NAMES)
def test_misspelt_argument_is_named(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'latent_dim'"):
        get_model(name.lower(), latent_dim=(8, 16, 32))
    with pytest.raises(SystemExit) as exit_info:
        AnomalibCLI(args=["fit", "--model", name, "--model.latent_dim", "[8, 16, 32]", "--data", "MVTecAD"])
    assert exit_info.value.code == 2
    assert "Option 'latent_dim' is not accepted" in capsys.readouterr().err


@pytest.mark.parametrize(("saved", "loading"), [("Pfm", "Pefm"), ("Pefm", "Pfm")])
def test_a_checkpoint_with_the_other_position_encoding_is_refused(saved: str, loading: str) -> None:
    """Pfm and Pefm have the same tensors: only the recorded ``position_encoding`` tells their checkpoints apart."""
    trained = MODEL_CLASSES[saved](**TINY_PFM, latent_dims=(8, 16, 32))
    checkpoint = {"state_dict": trained.state_dict(), "hyper_parameters": dict(trained.hparams)}
    trained.on_save_checkpoint(checkpoint)
    model = MODEL_CLASSES[loading](**TINY_PFM, latent_dims=(8, 16, 32))
    assert not state_differences(
        {name: value.shape for name, value in model.state_dict().items()},
        {name: value.shape for name, value in trained.state_dict().items()},
    )
    with pytest.raises(IncompatibleCheckpointError, match=rf"position_encoding differs \(checkpoint {saved == 'Pefm'}"):
        model.on_load_checkpoint(checkpoint)
    trained.on_load_checkpoint(checkpoint)  # its own checkpoint loads
