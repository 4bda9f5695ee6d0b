"""The one tiny Pcsnet fit that ``test_ddp.py`` runs under DDP (``ddp_worker.py``) and in a single process."""

from pathlib import Path

from anomalib.data import MVTecAD

from pcsnet_anomalib import Pcsnet
from tests.conftest import TINY_IMAGE_SIZE, TINY_MODEL

# 4 images at batch 2 on 2 ranks: each rank builds prototypes from 2 and takes 1 step per epoch.
DDP_FIT = {"k_shot": 4, "num_epochs": 2, "seed": 0}


def tiny_pcsnet() -> Pcsnet:
    pre_processor = Pcsnet.configure_pre_processor(image_size=(TINY_IMAGE_SIZE, TINY_IMAGE_SIZE))
    return Pcsnet(**{**TINY_MODEL, **DDP_FIT, "pre_processor": pre_processor})  # type: ignore[arg-type]


def tiny_datamodule(root: Path) -> MVTecAD:
    return MVTecAD(root=root, category="widget", num_workers=0, eval_batch_size=4)
