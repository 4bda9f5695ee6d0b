"""Write what a user deploys on: per predicted image its score, label, mask and heatmap.

anomalib's visualizer saves one composite picture per image; a production line needs the
numbers too. During ``predict`` (``anomalib predict``, ``Engine.predict``) this callback writes,
under ``<default_root_dir>/predictions``:

- ``predictions.csv``: ``image_path, pred_score, pred_label, mask, heatmap`` per image;
- ``masks/<n>_<stem>.png``: the predicted mask (0 or 255);
- ``heatmaps/<n>_<stem>.png``: the anomaly map as a colour heatmap (anomalib's colormap).

Files are numbered in prediction order so that images with the same name in different folders
never overwrite each other; an existing ``predictions`` folder is never written into (the next
free ``predictions_<i>`` is used).

A batch is written when the next one starts (and the last at the end of the epoch): a callback the user
passes to the Engine runs before the model's own callbacks, among them anomalib's post-processor, which
normalises scores and sets labels and masks in place after this callback has seen the batch.
"""

import csv
from pathlib import Path
from typing import IO, Any

import numpy as np
from anomalib.visualization.image.functional import visualize_anomaly_map
from lightning.pytorch import Callback, LightningModule, Trainer
from PIL import Image

CSV_COLUMNS = ("image_path", "pred_score", "pred_label", "mask", "heatmap")


def _free_folder(base: Path) -> Path:
    """``base`` if it does not exist yet, else the first ``base_<i>`` that does not."""
    candidate, index = base, 1
    while candidate.exists():
        candidate = base.with_name(f"{base.name}_{index}")
        index += 1
    return candidate


class PredictionWriter(Callback):
    """Save score, label, mask and heatmap of every predicted image (see the module docstring)."""

    def __init__(self, folder_name: str = "predictions") -> None:
        self.folder_name = folder_name
        self.output_dir: Path | None = None
        self._csv_file: IO[str] | None = None
        self._csv: Any = None
        self._count = 0
        self._pending: Any = None  # the last batch's outputs, written once the post-processor has run

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Create a fresh output folder and open the CSV."""
        del pl_module
        self.output_dir = _free_folder(Path(trainer.default_root_dir) / self.folder_name)
        (self.output_dir / "masks").mkdir(parents=True)
        (self.output_dir / "heatmaps").mkdir()
        self._csv_file = (self.output_dir / "predictions.csv").open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._csv_file)
        self._csv.writerow(CSV_COLUMNS)
        self._count = 0
        self._pending = None

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep the batch's outputs; they are written when the next batch starts or the epoch ends."""
        del trainer, pl_module, batch, batch_idx, dataloader_idx
        self._pending = outputs

    def on_predict_batch_start(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Write the previous batch, now post-processed."""
        del trainer, pl_module, batch, batch_idx, dataloader_idx
        self._write_pending()

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write the last batch."""
        del trainer, pl_module
        self._write_pending()

    def _write_pending(self) -> None:
        """Write one CSV row, one mask and one heatmap per image of the kept batch."""
        outputs, self._pending = self._pending, None
        if outputs is None:
            return
        assert self.output_dir is not None  # set in on_predict_start
        for item in outputs:
            path = Path(str(item.image_path)) if item.image_path else Path(f"image_{self._count}")
            name = f"{self._count:05d}_{path.stem}.png"
            self._count += 1
            mask_file, heatmap_file = self.output_dir / "masks" / name, self.output_dir / "heatmaps" / name
            if item.pred_mask is not None:
                mask = item.pred_mask.squeeze().cpu().numpy().astype(bool)
                Image.fromarray((mask * 255).astype(np.uint8)).save(mask_file)
            if item.anomaly_map is not None:
                visualize_anomaly_map(item.anomaly_map.squeeze().cpu(), normalize=True).save(heatmap_file)
            self._csv.writerow(
                (
                    str(path),
                    f"{float(item.pred_score):.6f}",
                    int(item.pred_label),
                    mask_file.relative_to(self.output_dir) if item.pred_mask is not None else "",
                    heatmap_file.relative_to(self.output_dir) if item.anomaly_map is not None else "",
                ),
            )

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Close the CSV."""
        del trainer, pl_module
        if self._csv_file is not None:
            self._csv_file.close()
            self._csv_file = None
