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
    assert config["trainer"]["max_epochs"] == config["model"]["init_args"]["num_epochs"] == epochs
