"""The shipped configs are what anomalib's CLI and benchmark pipeline can run."""

from pathlib import Path

import pytest
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
