"""The shipped configs are what anomalib's CLI and benchmark pipeline can run."""

from pathlib import Path

import pytest
import torch
import yaml

import pcsnet_anomalib  # noqa: F401  (registers Pcsnet and the datamodules on anomalib)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize(("name", "epochs"), [("demo.yaml", 50), ("mvtec_ad.yaml", 50), ("mvtec_ad_fast.yaml", 100)])
def test_cli_configs_name_pcsnet_with_known_arguments(name: str, epochs: int) -> None:
    """The paper's 50 epochs; the fast preset's 100 (chosen on validation scores, README "Speed")."""
    import inspect

    from pcsnet_anomalib import Pcsnet

    config = yaml.safe_load((CONFIGS / name).read_text())
    assert config["model"]["class_path"] == "Pcsnet"
    assert set(config["model"]["init_args"]) <= set(inspect.signature(Pcsnet).parameters)
    assert config["trainer"]["max_epochs"] == epochs  # the one place the epoch count is set


@pytest.mark.parametrize("name", ["demo.yaml", "mvtec_ad.yaml", "mvtec_ad_fast.yaml"])
def test_the_papers_protocol_is_a_datamodule_setting(name: str) -> None:
    """8 normal images at batch 2, as the paper trains; built the way anomalib builds a config's datamodule."""
    from anomalib.data import get_datamodule

    datamodule = get_datamodule(yaml.safe_load((CONFIGS / name).read_text())["data"])
    assert (datamodule.k_shot, datamodule.k_shot_seed, datamodule.train_batch_size) == (8, 0, 2)


@pytest.mark.parametrize(
    ("name", "model", "latent_dims", "learning_rates", "batch_size"),
    [
        ("pfm_mvtec_ad.yaml", "Pfm", [200, 400, 900], [3e-3, 3e-4, 3e-4], 8),
        ("pefm_mvtec_ad.yaml", "Pefm", [200, 400, 800], [3e-4, 3e-4, 3e-4], 16),
    ],
)
def test_pfm_configs_hold_the_authors_settings(
    name: str, model: str, latent_dims: list[int], learning_rates: list[float], batch_size: int
) -> None:
    """The published runs: 200 epochs, ResNet34 -> ResNet50 (torchvision weights), per-model widths, rates, batch."""
    from anomalib.data import get_datamodule
    from anomalib.models import get_model

    config = yaml.safe_load((CONFIGS / name).read_text())
    init_args = {**config["model"]["init_args"], "pre_trained": False}  # same architecture, nothing downloaded
    built = get_model({"class_path": config["model"]["class_path"], "init_args": init_args})
    assert type(built).__name__ == model
    assert (built.hparams.source_backbone, built.hparams.target_backbone) == ("resnet34.tv_in1k", "resnet50.tv_in1k")
    assert [mapping.shared.out_channels for mapping in built.model.mappings] == latent_dims
    assert [group["lr"] for group in built.configure_optimizers().param_groups] == learning_rates
    assert config["trainer"]["max_epochs"] == 200
    assert get_datamodule(config["data"]).train_batch_size == batch_size


def test_pefm_demo_config_is_offline_and_uses_the_packaged_pair() -> None:
    """The README's offline PEFM run: packaged Lite0 -> Lite2 weights, nothing from the hub."""
    from anomalib.models import get_model

    config = yaml.safe_load((CONFIGS / "pefm_demo.yaml").read_text())
    built = get_model(config["model"])
    assert type(built).__name__ == "Pefm"
    assert built.hparams.pre_trained is False
    assert (built.hparams.source_weights, built.hparams.target_weights) == (
        "package:efficientnet_lite0",
        "package:efficientnet_lite2",
    )
    assert [mapping.position_encoding for mapping in built.model.mappings] == [True, True, True]


def test_prn_demo_config_is_offline_and_trains_on_ten_real_anomalies() -> None:
    """The offline PRN run: packaged Lite0 weights, 128 px inputs, 10 real anomalies moved from test to training."""
    from anomalib.data import get_datamodule
    from anomalib.models import get_model

    config = yaml.safe_load((CONFIGS / "prn_demo.yaml").read_text())
    built = get_model(config["model"])
    assert type(built).__name__ == "Prn"
    assert built.hparams.pre_trained is False
    assert built.hparams.backbone_weights == "package:efficientnet_lite0"
    assert built.pre_processor.transform(torch.rand(1, 3, 256, 256)).shape[-2:] == (128, 128)
    datamodule = get_datamodule(config["data"])
    assert (datamodule.k_shot, datamodule.anomalous_shots, datamodule.train_on_anomalous_shots) == (None, 10, True)
