"""The one tiny Pcsnet fit that ``test_ddp.py`` runs under DDP (``ddp_worker.py``) and in a single process."""

from pathlib import Path

from pcsnet_anomalib import KShotMVTecAD, Pcsnet
from tests.conftest import TINY_IMAGE_SIZE, TINY_MODEL

# 4 images at batch 2 on 2 ranks: each rank builds prototypes from 2 and takes 1 step per epoch.
DDP_EPOCHS = 2


def tiny_pcsnet() -> Pcsnet:
    pre_processor = Pcsnet.configure_pre_processor(image_size=(TINY_IMAGE_SIZE, TINY_IMAGE_SIZE))
    return Pcsnet(**{**TINY_MODEL, "seed": 0, "pre_processor": pre_processor})  # type: ignore[arg-type]


def tiny_datamodule(root: Path) -> KShotMVTecAD:
    return KShotMVTecAD(root=root, category="widget", num_workers=0, k_shot=4, train_batch_size=2, eval_batch_size=4)
