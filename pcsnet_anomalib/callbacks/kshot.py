"""Few-shot training: train any anomalib model on k normal images chosen by a seed.

anomalib's one-class models always train on the whole train split. This callback replaces
the datamodule's training set, right after the datamodule is set up and before any
dataloader is built, by ``k_shot`` normal images drawn reproducibly from it. Validation and
test sets are left alone, so they never contain the chosen images unless they already did.
"""

import logging
from typing import Any

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer

logger = logging.getLogger(__name__)


class KShotSelection(Callback):
    """Keep ``k_shot`` normal training images, chosen at random with ``seed`` (``None`` keeps all).

    The chosen file paths are logged and saved in checkpoints (``state_dict``).

    Example:
        >>> from anomalib.engine import Engine
        >>> from anomalib.models import Padim
        >>> engine = Engine(callbacks=[KShotSelection(k_shot=4, seed=1)])  # doctest: +SKIP
        >>> engine.train(Padim(), datamodule=datamodule)  # doctest: +SKIP
    """

    def __init__(self, k_shot: int | None = 8, seed: int = 0) -> None:
        if k_shot is not None and k_shot < 1:
            msg = f"k_shot must be a positive number of images or None (all images), got {k_shot}."
            raise ValueError(msg)
        self.k_shot = k_shot
        self.seed = seed
        self.selected_paths: list[str] = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Subsample the training set of ``trainer.datamodule`` when fitting."""
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
            if self.k_shot is not None and self.k_shot != len(preselected):
                logger.warning(
                    "%s already chose %d training images; keeping them instead of k_shot=%d.",
                    type(datamodule).__name__,
                    len(preselected),
                    self.k_shot,
                )
            self.selected_paths = list(preselected)
            return
        datamodule.train_data = self.subsample(train_data)
        logger.info(
            "k-shot selection (k_shot=%s, seed=%d): training on %d images: %s",
            self.k_shot,
            self.seed,
            len(self.selected_paths),
            ", ".join(self.selected_paths),
        )

    def subsample(self, train_data: Any) -> Any:
        """Return ``train_data`` restricted to the chosen images, recorded in ``selected_paths``."""
        self.selected_paths = self.select(train_data)
        chosen = set(self.selected_paths)
        keep = [index for index, path in enumerate(train_data.samples.image_path) if path in chosen]
        return train_data if len(keep) == len(train_data) else train_data.subsample(keep)

    def select(self, train_data: Any) -> list[str]:
        """Return the image paths of the chosen normal training images, sorted."""
        samples = train_data.samples
        normal_paths = sorted(samples.image_path[samples.label_index == 0].tolist())
        category = getattr(train_data, "category", None) or "this dataset"
        if not normal_paths:
            msg = f"The training set of {category} has no normal images: check the dataset root and category."
            raise ValueError(msg)
        if self.k_shot is None:
            return normal_paths
        if self.k_shot > len(normal_paths):
            msg = (
                f"k_shot={self.k_shot} but the training set of {category} has only {len(normal_paths)} normal "
                f"images: set k_shot to at most {len(normal_paths)}, or None to use all of them."
            )
            raise ValueError(msg)
        rng = np.random.default_rng(self.seed)
        chosen = rng.choice(len(normal_paths), size=self.k_shot, replace=False)
        return sorted(normal_paths[index] for index in chosen)

    def state_dict(self) -> dict[str, Any]:
        """Save the choice with the checkpoint."""
        return {"k_shot": self.k_shot, "seed": self.seed, "selected_paths": list(self.selected_paths)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the recorded choice."""
        self.selected_paths = list(state_dict.get("selected_paths", []))
