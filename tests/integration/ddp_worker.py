"""Fit and test a tiny Pcsnet under Lightning DDP on CPU processes (gloo); run by ``test_ddp.py``.

Lightning's DDP launcher starts the other ranks by running this script again. Every rank saves
its prototypes and trained weights to ``<out>/rank<r>.pt``; rank 0 also saves the checkpoint
(``<out>/model.ckpt``) and the test metrics (``<out>/metrics.json``).
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from anomalib.engine import Engine
from lightning.pytorch.strategies import DDPStrategy

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # the ranks Lightning starts import ``tests`` like the first one

from pcsnet_anomalib import Pcsnet  # noqa: E402
from tests.integration.ddp_settings import DDP_EPOCHS, tiny_datamodule, tiny_pcsnet  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="MVTec-layout root with the category 'widget'")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--devices", type=int, default=2)
    args = parser.parse_args()

    model: Pcsnet = tiny_pcsnet()
    engine = Engine(
        default_root_dir=args.out / "run",
        accelerator="cpu",
        devices=args.devices,
        strategy=DDPStrategy(process_group_backend="gloo"),
        max_epochs=DDP_EPOCHS,
        logger=False,
        enable_progress_bar=False,
    )
    datamodule = tiny_datamodule(args.data)
    engine.fit(model, datamodule=datamodule)
    rank = engine.trainer.global_rank
    torch.save(
        {"prototypes": model.model.memory.prototypes, "state_dict": model.model.state_dict()},
        args.out / f"rank{rank}.pt",
    )
    engine.trainer.save_checkpoint(args.out / "model.ckpt")  # written by rank 0 only
    metrics = engine.test(model, datamodule=datamodule)[0]
    if rank == 0:
        (args.out / "metrics.json").write_text(json.dumps(metrics))


if __name__ == "__main__":
    main()
