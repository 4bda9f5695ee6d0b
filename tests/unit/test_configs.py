"""The shipped configs are what anomalib's CLI and benchmark pipeline can run."""

from pathlib import Path

import pytest
import yaml
from anomalib.models import get_model

import pcsnet_anomalib  # noqa: F401  (registers Pcsnet and the datamodules on anomalib)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_benchmark_models_share_their_keys_so_results_can_be_tabulated() -> None:
    """anomalib 2.7 writes results.csv only when every job's flattened config has the same keys."""
    config = yaml.safe_load((CONFIGS / "benchmark_kshot.yaml").read_text())
    models = config["benchmark"]["model"]["grid"]
    assert {entry["class_path"] for entry in models} == {"Pcsnet", "Padim", "Patchcore"}
    assert len({tuple(sorted(entry["init_args"])) for entry in models}) == 1
    for entry in models:  # each entry builds (no weights are downloaded without pre_trained)
        assert (
            type(get_model({**entry, "init_args": {**entry["init_args"], "pre_trained": False}})).__name__
            == (entry["class_path"])
        )
    data = config["benchmark"]["data"]
    assert data["class_path"] == "KShotMVTecAD"
    assert data["init_args"]["k_shot"]["grid"] == [1, 2, 4, 8]
    assert len(data["init_args"]["k_shot_seed"]["grid"]) >= 3


@pytest.mark.parametrize("name", ["demo.yaml", "mvtec_ad.yaml"])
def test_cli_configs_name_pcsnet_with_known_arguments(name: str) -> None:
    import inspect

    from pcsnet_anomalib import Pcsnet

    config = yaml.safe_load((CONFIGS / name).read_text())
    assert config["model"]["class_path"] == "Pcsnet"
    assert set(config["model"]["init_args"]) <= set(inspect.signature(Pcsnet).parameters)
    assert config["trainer"]["max_epochs"] == config["model"]["init_args"]["num_epochs"] == 50
