"""Few-shot training as a callback: train any anomalib model on k normal images chosen by a seed.

For a datamodule you cannot change (the k-shot datamodules of :mod:`pcsnet_anomalib.data.kshot` are the
other way). Right after the datamodule is set up and before any dataloader is built, the callback restricts
the datamodule's training set to the images :func:`~pcsnet_anomalib.data.kshot.select_k_shot` chooses.
Validation and test sets are left alone, so they never contain the chosen images unless they already did.
Abnormal training images (the anomalous shots of :mod:`pcsnet_anomalib.data.anomalous_shots`) are kept: k
counts normal images.
"""

import logging
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from pcsnet_anomalib.data.kshot import check_k_shot, restrict_to, select_k_shot

logger = logging.getLogger(__name__)


class KShotSelection(Callback):
    """Keep ``k_shot`` normal training images chosen at random with ``seed`` (``None``: all), and any abnormal ones.

    The chosen file paths are logged and saved in checkpoints (``state_dict``).

    Example:
        >>> from anomalib.engine import Engine
        >>> from anomalib.models import Padim
        >>> engine = Engine(callbacks=[KShotSelection(k_shot=4, seed=1)])  # doctest: +SKIP
        >>> engine.train(Padim(), datamodule=datamodule)  # doctest: +SKIP
    """

    def __init__(self, k_shot: int | None = 8, seed: int = 0) -> None:
        check_k_shot(k_shot)
        self.k_shot = k_shot
        self.seed = seed
        self.selected_paths: list[str] = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Restrict the training set of ``trainer.datamodule`` when fitting."""
        del pl_module
        if stage != "fit":
            return
        datamodule = trainer.datamodule
        train_data = getattr(datamodule, "train_data", None)
        if train_data is None:
            msg = (
                "KShotSelection needs a datamodule with a `train_data` AnomalibDataset (e.g. MVTecAD, Folder); "
                "pass `datamodule=` to Engine/Trainer.fit instead of bare dataloaders."
            )
            raise RuntimeError(msg)
        preselected = getattr(datamodule, "few_shot_paths", None)
        if preselected is not None:
            if self.k_shot != len(preselected):
                logger.warning(
                    "%s already chose %d training images; keeping them instead of k_shot=%s.",
                    type(datamodule).__name__,
                    len(preselected),
                    self.k_shot,
                )
            self.selected_paths = list(preselected)
            return
        self.selected_paths = select_k_shot(train_data, self.k_shot, self.seed)
        samples = train_data.samples
        labelled_anomalies = samples.image_path[samples.label_index == 1].tolist()
        datamodule.train_data = restrict_to(train_data, self.selected_paths + labelled_anomalies)
        logger.info(
            "k-shot selection (k_shot=%s, seed=%d): training on %d images: %s",
            self.k_shot,
            self.seed,
            len(self.selected_paths),
            ", ".join(self.selected_paths),
        )

    def state_dict(self) -> dict[str, Any]:
        """Save the choice with the checkpoint."""
        return {"k_shot": self.k_shot, "seed": self.seed, "selected_paths": list(self.selected_paths)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the recorded choice."""
        self.selected_paths = list(state_dict.get("selected_paths", []))
