"""Training under Lightning DDP: 2 CPU processes with the gloo backend against a single-process run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from anomalib.engine import Engine

from pcsnet_anomalib import Pcsnet
from tests.conftest import state_differences
from tests.integration.ddp_settings import DDP_EPOCHS, tiny_datamodule, tiny_pcsnet

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_ddp_on_two_cpu_processes_matches_a_single_process(mvtec_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two ranks share this machine's cores
    done = subprocess.run(
        [sys.executable, str(WORKER), "--data", str(mvtec_root), "--out", str(out), "--devices", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [torch.load(out / f"rank{rank}.pt") for rank in (0, 1)]

    # Each rank saw 2 of the 4 images; the prototypes are the mean over all 4, identical on both ranks.
    assert torch.equal(ranks[0]["prototypes"], ranks[1]["prototypes"])
    single = tiny_pcsnet()
    single_engine = Engine(
        default_root_dir=tmp_path / "single",
        accelerator="cpu",
        devices=1,
        max_epochs=DDP_EPOCHS,
        logger=False,
        enable_progress_bar=False,
    )
    single_engine.fit(single, datamodule=tiny_datamodule(mvtec_root))
    torch.testing.assert_close(ranks[0]["prototypes"], single.model.memory.prototypes, rtol=1e-5, atol=1e-6)

    # DDP keeps the weights (and the random streams) of the ranks in step.
    assert not state_differences(ranks[0]["state_dict"], ranks[1]["state_dict"])

    # Metrics gathered over the two ranks equal a single-process test of the same checkpoint.
    ddp_metrics = json.loads((out / "metrics.json").read_text())
    trained = Pcsnet.load_from_checkpoint(out / "model.ckpt")
    single_metrics = Engine(
        default_root_dir=tmp_path / "test", accelerator="cpu", devices=1, logger=False, enable_progress_bar=False
    ).test(trained, datamodule=tiny_datamodule(mvtec_root))[0]
    assert ddp_metrics.keys() == single_metrics.keys()
    for name in ("image_AUROC", "pixel_AUROC"):
        assert ddp_metrics[name] == pytest.approx(single_metrics[name], abs=1e-6), name
