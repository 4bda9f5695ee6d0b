"""The k-shot protocol as an anomalib benchmark pipeline: anomalib's config format, jobs and ``results.csv``.

``anomalib benchmark`` (2.7) cannot hold this protocol for a mixed model grid, for reasons in its source:
``BenchmarkJob.collect`` needs the same ``init_args`` keys for every model (PaDiM needs ``n_features`` for
backbones it does not know; CFA has no ``layers``/``pre_trained``), each job builds ``Engine`` without trainer
arguments (CFA would train Lightning's default 1000 epochs), ``init_args`` cannot carry objects (so neither the
input size nor the metrics can be set), and every model keeps its own input size (224 crop or 256).
:class:`KShotBenchmark` is anomalib's ``Benchmark`` with a job that fixes exactly those points, configured by a
top-level ``protocol`` section next to anomalib's ``accelerator`` and ``benchmark`` sections:

.. code-block:: yaml

    protocol:
      image_size: [256, 256]        # every model: resize to this ...
      center_crop_size: [224, 224]  # ... then centre-crop (null: no crop); normalisation stays each model's own
      aupro: true                   # add pixel AUPRO to each model's test metrics
      pixel_ap: false               # add pixel average precision (AUPR, PRN's "AP") to them
      trainer:                      # Engine/Trainer arguments per grid label or model class (a model's
                                    # trainer_arguments win)
        Cfa: {max_epochs: 30}
      register_packaged_weights: true  # timm name tf_efficientnet_lite0.package_in1k = the offline Lite0 weights
      n_jobs: 1                     # jobs at once (anomalib's ParallelRunner): CPU: the cores are split
                                    # between them; CUDA: one GPU each (at most the number of GPUs)
      results_dir: null             # a folder: each finished job's row is kept there as JSON and a re-run
                                    # (after an interruption) returns it instead of running the job again
      showcase_k: null              # a k: its seed-0 jobs save the anomaly map of the first test image of each
                                    # defect type (results_dir/heatmaps) for a side-by-side page, and ...
      latency_runs: 0               # ... with > 0, time that many batch-1 forward passes of the fitted model
      limits: {}                    # per grid label or model class, the data values it runs with, e.g.
                                    # {Pcsnet: {k_shot: [1, 2]}}: other jobs of that model are not generated
      k_shot_seeds: {}              # per k, the k-shot seeds run there (default: every seed of the grid),
                                    # e.g. {8: [0]} to spend the time on more seeds where k is small
      reuse_fits: false             # jobs that train the same model (config, trainer arguments, seed) on the
                                    # same training images fit once: results_dir/fits holds the checkpoint,
                                    # the other jobs validate and test it (e.g. an unsupervised model beside
                                    # Prn's anomalous-shot seeds, whose test sets differ but whose training
                                    # sets do not)

A grid entry may carry a ``label`` beside ``class_path`` (e.g. ``Pcsnet-fast``), so that two settings of one model
class get rows of their own; it is the ``model.label`` column of ``results.csv``. When ``k_shot`` is null (all
normal images) the selection does not depend on ``k_shot_seed``: such a job runs for the first seed only.

The k-shot subset is the datamodule's (``KShotMVTecAD``, ``KShotPcsnetDemo``), so it is the same for every
model of a (category, k, seed) cell. Nothing is selected on test data: there is no early stopping or checkpoint
selection, every job tests its last weights, and the reported metrics do not depend on thresholds.

Each row of ``results.csv`` also holds the last weights' image and pixel AUROC on the validation split
(``val_image_AUROC``, ``val_pixel_AUROC``), so that settings can be chosen on validation data. They are only
held-out data where the datamodule's validation split is disjoint from its test split (the demo's
``val_split_mode: from_test``); MVTec AD and MPDD validate on their test set (``same_as_test``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np
import pandas as pd
import torch
from anomalib.data import get_datamodule
from anomalib.engine import Engine
from anomalib.metrics import AUPR, AUPRO, AUROC, Evaluator, F1Score
from anomalib.metrics.base import AnomalibMetric
from anomalib.models import AnomalibModule, get_model
from anomalib.pipelines.benchmark import Benchmark
from anomalib.pipelines.benchmark.generator import BenchmarkJobGenerator
from anomalib.pipelines.benchmark.job import BenchmarkJob
from anomalib.pipelines.components import Runner
from anomalib.pipelines.components.runners import ParallelRunner, SerialRunner
from anomalib.pipelines.components.utils import get_iterator_from_grid_dict
from anomalib.pipelines.types import PREV_STAGE_RESULT
from anomalib.pre_processing import PreProcessor
from anomalib.utils.config import flatten_dict
from anomalib.utils.logging import hide_output
from jsonargparse import Namespace
from lightning import seed_everything
from omegaconf import OmegaConf
from PIL import Image
from torchvision.transforms.v2 import CenterCrop, Compose, Resize, Transform

from pcsnet_anomalib._upstream import RawScoreROC
from pcsnet_anomalib.backbones.weights import register_packaged_timm_weights

logger = logging.getLogger(__name__)

_GEOMETRIC = (Resize, CenterCrop)


class RawScoreAUROC(AnomalibMetric, RawScoreROC):  # type: ignore[misc]
    """AUROC of scores that are not normalised to [0, 1]: validation, before anomalib's post-processor.

    torchmetrics takes an update whose scores leave [0, 1] for logits and applies a sigmoid to that update only
    (torchmetrics#1526), so batches with and without a score outside [0, 1] are ranked on different scales.
    Raw PCSNet maps are slightly below 0 or above 1 in some batches. anomalib's test metrics are safe (they see
    the post-processor's [0, 1] scores), and its threshold metric skips the sigmoid, as this one does. The
    tensor-level part is :class:`pcsnet_anomalib._upstream.RawScoreROC` (it subclasses a private anomalib class).
    """

    def __init__(self, fields: Sequence[str], prefix: str = "", **kwargs: Any) -> None:
        super().__init__(fields=fields, prefix=prefix, **kwargs)
        self.name = prefix + AUROC.__name__  # logged as anomalib's AUROC is: ``val_image_AUROC``


@dataclass
class Protocol:
    """Settings shared by every job of a k-shot benchmark (the config's ``protocol`` section)."""

    image_size: tuple[int, int] | None = (256, 256)
    center_crop_size: tuple[int, int] | None = (224, 224)
    aupro: bool = True
    pixel_ap: bool = False
    trainer: dict[str, dict[str, Any]] = field(default_factory=dict)
    register_packaged_weights: bool = False
    n_jobs: int = 1
    results_dir: str | None = None
    showcase_k: int | None = None
    latency_runs: int = 0
    limits: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    k_shot_seeds: dict[int, list[int]] = field(default_factory=dict)
    reuse_fits: bool = False

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> Protocol:
        """Build from the YAML section, rejecting unknown keys by name."""
        section = dict(section or {})
        unknown = sorted(set(section) - set(cls.__dataclass_fields__))
        if unknown:
            msg = f"Unknown protocol keys {unknown}; valid keys: {sorted(cls.__dataclass_fields__)}."
            raise ValueError(msg)
        for key in ("image_size", "center_crop_size"):
            if section.get(key) is not None:
                section[key] = tuple(section[key])
        protocol = cls(**section)
        if protocol.n_jobs < 1:
            msg = f"protocol.n_jobs must be at least 1, got {protocol.n_jobs}."
            raise ValueError(msg)
        if protocol.latency_runs < 0:
            msg = f"protocol.latency_runs must be 0 (off) or more, got {protocol.latency_runs}."
            raise ValueError(msg)
        if protocol.showcase_k is not None and protocol.results_dir is None:
            msg = "protocol.showcase_k saves heatmaps into protocol.results_dir: set results_dir too."
            raise ValueError(msg)
        if protocol.reuse_fits and protocol.results_dir is None:
            msg = "protocol.reuse_fits keeps the shared fits in protocol.results_dir/fits: set results_dir too."
            raise ValueError(msg)
        if protocol.latency_runs and protocol.showcase_k is None:
            msg = "protocol.latency_runs times the jobs at protocol.showcase_k: set showcase_k too."
            raise ValueError(msg)
        return protocol

    def pre_processor(self, model: AnomalibModule) -> PreProcessor | None:
        """The model's default pre-processor with its resize/crop replaced by the protocol's (None: keep it)."""
        if self.image_size is None:
            return None
        default = model.configure_pre_processor()
        steps: Sequence[Transform] = getattr(default.transform, "transforms", [default.transform])
        kept = [step for step in steps if not isinstance(step, _GEOMETRIC)]
        if any("Crop" in type(step).__name__ for step in kept):
            msg = f"{type(model).__name__}'s default pre-processor crops in a way the protocol cannot replace: {steps}"
            raise ValueError(msg)
        geometry: list[Transform] = [Resize(self.image_size, antialias=True)]
        if self.center_crop_size is not None:
            geometry.append(CenterCrop(self.center_crop_size))
        return PreProcessor(transform=Compose([*geometry, *kept]))

    def evaluator(self) -> Evaluator:
        """Test metrics as anomalib's defaults (plus pixel AUPRO, pixel AP when set), and the validation AUROCs."""
        validation = [
            RawScoreAUROC(fields=["pred_score", "gt_label"], prefix="val_image_"),
            RawScoreAUROC(fields=["anomaly_map", "gt_mask"], prefix="val_pixel_", strict=False),
        ]
        metrics = [
            AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
            F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
            AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
            F1Score(fields=["pred_mask", "gt_mask"], prefix="pixel_", strict=False),
        ]
        if self.aupro:
            metrics.append(AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False))
        if self.pixel_ap:
            metrics.append(AUPR(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False))
        return Evaluator(val_metrics=validation, test_metrics=metrics)

    def build_model(self, config: Mapping[str, Any]) -> AnomalibModule:
        """Instantiate a model of the grid with anomalib's ``get_model``, then set the protocol's components.

        The components are set after construction because ``init_args`` hold plain values only. Those are given as
        Python lists and dicts: a model built from a config dict gets OmegaConf containers as hyper-parameters,
        which its checkpoints then pickle and ``torch.load``'s default ``weights_only=True`` refuses to read back.
        """
        init_args = OmegaConf.to_container(OmegaConf.create(dict(config.get("init_args") or {})), resolve=True)
        model = get_model(str(config["class_path"]).rsplit(".", 1)[-1], **init_args)
        model.evaluator = self.evaluator()
        pre_processor = self.pre_processor(model)
        if pre_processor is not None:
            model.pre_processor = pre_processor
        return model


class KShotBenchmarkJob(BenchmarkJob):
    """anomalib's benchmark job, with per-model trainer arguments and results that may have different keys.

    With a ``result_path`` the job is resumable: a finished job's row is written there (JSON, atomically) and
    returned as it is by a later run instead of fitting again. ``latency_runs`` > 0 adds ``latency_ms``, the
    median time of a batch-1 forward pass of the fitted model (pre-processing, model, post-processing) on one
    test image. ``heatmap_dir`` receives the anomaly map of the first test image of each defect type. A finished
    job needs no ``model`` or ``datamodule`` (None): it only returns its stored row. With ``fits_dir`` the fit is
    shared (:meth:`shared_fit_path`): a job whose fit is there validates and tests it instead of fitting again.
    """

    def __init__(
        self,
        accelerator: str,
        model: AnomalibModule | None,
        datamodule: Any,
        seed: int,
        flat_cfg: dict,
        trainer_args: Mapping[str, Any] | None = None,
        threads: int | None = None,
        result_path: Path | None = None,
        latency_runs: int = 0,
        heatmap_dir: Path | None = None,
        fits_dir: Path | None = None,
    ) -> None:
        super().__init__(accelerator=accelerator, model=model, datamodule=datamodule, seed=seed, flat_cfg=flat_cfg)
        self.trainer_args = dict(trainer_args or {})
        self.threads = threads
        self.result_path = result_path
        self.latency_runs = latency_runs
        self.heatmap_dir = heatmap_dir
        self.fits_dir = fits_dir

    def run(self, task_id: int | None = None) -> dict[str, Any]:
        """The stored row of a finished job, else :meth:`fit_and_test` (stored when ``result_path`` is set).

        A job that raises returns its config with an ``error`` column instead, so that the other jobs of the grid
        still run; it is written to ``errors/`` beside ``jobs/``, not stored as finished: a later run tries it again.
        """
        if self.result_path is not None and self.result_path.is_file():
            logger.info("Finished before, not run again: %s", self.result_path.name)
            return json.loads(self.result_path.read_text())
        try:
            output = self.fit_and_test(task_id)
        except Exception as error:  # one failing model must not end a grid of hours
            cause = error.__cause__ or error  # anomalib's hide_output wraps the job's own exception
            logger.exception("Job failed: %s", self.flat_cfg)
            failed = {**self.flat_cfg, "error": f"{type(cause).__name__}: {cause}"}
            if self.result_path is not None:  # kept apart from the results: the job is tried again next run
                _write_json(self.result_path.parent.parent / "errors" / self.result_path.name, failed)
            return failed
        if self.result_path is not None:
            _write_json(self.result_path, output)
            (self.result_path.parent.parent / "errors" / self.result_path.name).unlink(missing_ok=True)
        return output

    @hide_output
    def fit_and_test(self, task_id: int | None = None) -> dict[str, Any]:
        """Fit, then validate and test the last weights; return durations, the flat config and the metrics.

        ``task_id`` is the slot of anomalib's ParallelRunner: the GPU of a CUDA job.
        """
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        devices: int | list[int] = 1 if task_id is None or self.accelerator != "cuda" else [task_id]
        job_start = time.time()
        shared_fit = self.shared_fit_path()
        extras: dict[str, Any] = {}
        with TemporaryDirectory() as temp_dir:
            seed_everything(self.seed)
            engine = Engine(
                accelerator=self.accelerator,
                devices=devices,
                default_root_dir=temp_dir,
                logger=False,
                **self.trainer_args,
            )
            fit_start = time.time()
            reused = shared_fit is not None and shared_fit.is_file()
            if not reused:
                engine.fit(self.model, self.datamodule)
                if shared_fit is not None:
                    _save_fit(engine, shared_fit, time.time() - fit_start)
            validate_start = time.time()
            # Validated again after fitting: the last weights' scores, whatever the trainer's validation schedule.
            # A shared fit is loaded here; the test then runs on the loaded, validated model.
            checkpoint = shared_fit if reused else None
            validation_results = engine.validate(self.model, self.datamodule, ckpt_path=checkpoint)
            test_start = time.time()
            test_results = engine.test(self.model, self.datamodule)
        job_end = time.time()
        fit_duration = validate_start - fit_start
        if shared_fit is not None:
            extras["fit_reused"] = reused
            if reused:  # the time of the fit this job shares, not of loading it
                fit_duration = json.loads(shared_fit.with_suffix(".json").read_text())["fit_duration"]
        if self.latency_runs:
            extras["latency_ms"] = self._latency_ms()
        if self.heatmap_dir is not None:
            self._save_heatmaps(self.heatmap_dir)
        output = {
            "accelerator": self.accelerator,
            "job_duration": job_end - job_start,
            "fit_duration": fit_duration,
            "validate_duration": test_start - validate_start,
            "test_duration": job_end - test_start,
            **self.flat_cfg,
            **validation_results[0],
            **test_results[0],
            **extras,
        }
        logger.info(f"Completed with result {output}")
        return output

    def shared_fit_path(self) -> Path | None:
        """Where this job's fit is shared (``fits_dir``), named by what the fit depends on; None when not shared.

        The name hashes the model's config, the trainer arguments, the seed, the data settings other than the
        anomalous-shot selection, and the training images themselves (path, label, mask) after the datamodule's
        setup: jobs that differ only in which test images they hold out share it.
        """
        if self.fits_dir is None:
            return None
        self.datamodule.setup()
        samples = self.datamodule.train_data.samples
        columns = [column for column in ("image_path", "label_index", "mask_path") if column in samples.columns]
        data_args = {
            key: value
            for key, value in self.flat_cfg.items()
            if key.startswith("data.") and key.rsplit(".", 1)[-1] not in _SELECTION_OF_HELD_OUT_IMAGES
        }
        identity = {
            "model": {key: value for key, value in self.flat_cfg.items() if key.startswith("model.")},
            "data": data_args,
            "trainer": self.trainer_args,
            "seed": self.seed,
            "training_images": samples[columns].astype(str).to_numpy().tolist(),
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
        model = self.flat_cfg.get("model.label") or str(self.flat_cfg.get("model.class_path")).rsplit(".", 1)[-1]
        return self.fits_dir / f"{model}-{self.flat_cfg.get('data.init_args.category', 'data')}-{digest}.ckpt"

    def _latency_ms(self) -> float:
        """Median wall time of ``latency_runs`` batch-1 forward passes on the first test image (2 warm-up passes)."""
        image = self.datamodule.test_data[0].image.unsqueeze(0).to(self.model.device)
        self.model.eval()
        times = []
        with torch.inference_mode():
            for run in range(self.latency_runs + 2):
                start = time.perf_counter()
                self.model(image)
                if run >= 2:
                    times.append(time.perf_counter() - start)
        return 1000.0 * statistics.median(times)

    def _save_heatmaps(self, folder: Path) -> None:
        """Write the anomaly maps of the first test image of each defect type, and ``index.json``.

        Maps are 0-255 PNGs of the post-processor's normalised map; ``index.json`` names each map's image and mask.
        """
        samples = self.datamodule.test_data.samples.reset_index(drop=True)
        chosen = samples[samples.label_index == 1].sort_values("image_path").groupby("label", sort=True).head(1)
        folder.mkdir(parents=True, exist_ok=True)
        index = {}
        self.model.eval()
        with torch.inference_mode():
            for row, sample in chosen.iterrows():
                image = self.datamodule.test_data[int(row)].image.unsqueeze(0).to(self.model.device)
                anomaly_map = self.model(image).anomaly_map.detach().float().cpu().squeeze()
                name = f"{sample.label}_{Path(sample.image_path).stem}.png"
                pixels = np.rint(anomaly_map.clamp(0, 1).numpy() * 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / name)
                index[name] = {"label": sample.label, "image_path": sample.image_path, "mask_path": sample.mask_path}
        _write_json(folder / "index.json", index)

    @staticmethod
    def collect(results: list[dict[str, Any]]) -> pd.DataFrame:
        """One row per job; a key that only some models have (``layers``, ``n_features``) is empty elsewhere."""
        return pd.DataFrame(results)


_SELECTION_OF_HELD_OUT_IMAGES = ("anomalous_shots", "anomalous_shots_seed")
"""Data settings that only choose held-out images when the training images are the same (the shared-fit key)."""


def _save_fit(engine: Engine, path: Path, fit_duration: float) -> None:
    """Save a fitted job's checkpoint and fit time at ``path`` (``.ckpt``, ``.json``), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    engine.trainer.save_checkpoint(temporary)
    _write_json(path.with_suffix(".json"), {"fit_duration": fit_duration})
    temporary.replace(path)


def _write_json(path: Path, content: Mapping[str, Any] | list[Any]) -> None:
    """Write ``content`` as JSON through a temporary file renamed into place, so no reader sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(content, indent=1, sort_keys=True, default=_json_value) + "\n")
    temporary.replace(path)


def _json_value(value: Any) -> Any:
    """JSON form of values that ``json`` does not know: tensors and numpy scalars as numbers, others as text."""
    if isinstance(value, torch.Tensor | np.generic):
        return value.item()
    return str(value)


def _k_shot_order(container: Mapping[str, Any]) -> float:
    """Sort key of a job: its ``k_shot`` (all images, ``None``, last; jobs without one first)."""
    k_shot = container["data"].get("init_args", {}).get("k_shot", 0)
    return math.inf if k_shot is None else float(k_shot)


def job_name(flat_cfg: Mapping[str, Any]) -> str:
    """A readable, unique file name for a job: model label, category, k, seed and a hash of its whole config."""
    digest = hashlib.sha256(json.dumps(flat_cfg, sort_keys=True, default=str).encode()).hexdigest()[:10]
    model = flat_cfg.get("model.label") or str(flat_cfg.get("model.class_path", "model")).rsplit(".", 1)[-1]
    category = flat_cfg.get("data.init_args.category", "data")
    k_shot = flat_cfg.get("data.init_args.k_shot")
    seed = flat_cfg.get("data.init_args.k_shot_seed", 0)
    anomalous = ""
    if "data.init_args.anomalous_shots" in flat_cfg:  # m real anomalies held out of test (and used by Prn)
        anomalous = (
            f"-m{flat_cfg['data.init_args.anomalous_shots']}-a{flat_cfg.get('data.init_args.anomalous_shots_seed', 0)}"
        )
    return f"{model}-{category}-k{'all' if k_shot is None else k_shot}-s{seed}{anomalous}-{digest}"


class KShotBenchmarkJobGenerator(BenchmarkJobGenerator):
    """Generate one :class:`KShotBenchmarkJob` per grid point, models built under the :class:`Protocol`."""

    def __init__(self, accelerator: str, protocol: Protocol) -> None:
        super().__init__(accelerator)
        self.protocol = protocol
        # Parallel CPU jobs share the cores instead of each starting one thread per core.
        parallel_cpu = protocol.n_jobs > 1 and accelerator == "cpu"
        self.threads = max(1, (os.cpu_count() or 1) // protocol.n_jobs) if parallel_cpu else None

    @property
    def job_class(self) -> type:
        """:class:`KShotBenchmarkJob`."""
        return KShotBenchmarkJob

    @hide_output
    def generate_jobs(self, args: dict, previous_stage_result: PREV_STAGE_RESULT) -> Generator[KShotBenchmarkJob]:
        """Jobs for every combination of the grids in ``args`` (the config's ``benchmark`` section)."""
        del previous_stage_result
        results_dir = None if self.protocol.results_dir is None else Path(self.protocol.results_dir)
        for container in self.grid_points(args):
            model_config = dict(container["model"])
            model_config.pop("label", None)
            model_name = str(model_config["class_path"]).rsplit(".", 1)[-1]
            flat_cfg = flatten_dict(container)
            showcase_dir = self._showcase_dir(container, results_dir)
            result_path = None if results_dir is None else results_dir / "jobs" / f"{job_name(flat_cfg)}.json"
            # A finished job only returns its stored row: building its model and data (about a second each, with
            # backbone weights) would make resuming a long grid slow.
            finished = result_path is not None and result_path.is_file()
            # Models draw random numbers when built (PaDiM picks its feature subset): seeding here makes a job's
            # model depend on its seed only, not on which jobs were generated before it (serial or parallel).
            seed_everything(container["seed"])
            yield KShotBenchmarkJob(
                accelerator=self.accelerator,
                seed=container["seed"],
                model=None if finished else self.protocol.build_model(model_config),
                datamodule=None if finished else get_datamodule(container["data"]),
                flat_cfg=flat_cfg,
                trainer_args=self.protocol.trainer.get(
                    container["model"].get("label"), self.protocol.trainer.get(model_name)
                ),
                threads=self.threads,
                result_path=result_path,
                latency_runs=self.protocol.latency_runs if showcase_dir is not None else 0,
                heatmap_dir=showcase_dir,
                fits_dir=results_dir / "fits" if results_dir is not None and self.protocol.reuse_fits else None,
            )

    def grid_points(self, args: dict) -> Generator[dict[str, Any]]:
        """The grid points of ``args`` that run: within ``protocol.limits``, one all-images job per seed grid.

        Smallest k first, so that an interrupted run has whole tables for the k it reached.
        """
        seen_all_image_jobs: set[str] = set()
        for container in sorted(get_iterator_from_grid_dict(args), key=_k_shot_order):
            if not self._repeats_an_all_images_job(container, seen_all_image_jobs) and self._within_limits(container):
                yield container

    @staticmethod
    def _repeats_an_all_images_job(container: Mapping[str, Any], seen: set[str]) -> bool:
        """True for a job on all normal images (``k_shot`` null) whose twin with another k-shot seed was seen."""
        data_args = container["data"].get("init_args", {})
        if "k_shot" not in data_args or data_args["k_shot"] is not None:
            return False
        without_seed = {**data_args, "k_shot_seed": None}
        key = json.dumps({**container, "data": {**container["data"], "init_args": without_seed}}, default=str)
        if key in seen:
            return True
        seen.add(key)
        return False

    def _within_limits(self, container: Mapping[str, Any]) -> bool:
        """False for a job outside ``protocol.limits`` of its label or model class or ``protocol.k_shot_seeds``."""
        model = container["model"]
        class_name = str(model["class_path"]).rsplit(".", 1)[-1]
        limits = self.protocol.limits.get(model.get("label"), self.protocol.limits.get(class_name, {}))
        data_args = container["data"].get("init_args", {})
        seeds = self.protocol.k_shot_seeds.get(data_args.get("k_shot"))
        if seeds is not None and data_args.get("k_shot_seed") not in seeds:
            return False
        return all(data_args.get(key) in allowed for key, allowed in limits.items())

    def _showcase_dir(self, container: Mapping[str, Any], results_dir: Path | None) -> Path | None:
        """Where a showcase job (``protocol.showcase_k``, k-shot seed 0) saves heatmaps; None for other jobs."""
        data_args = container["data"].get("init_args", {})
        if results_dir is None or self.protocol.showcase_k is None or data_args.get("k_shot_seed", 0):
            return None
        if data_args.get("k_shot") != self.protocol.showcase_k:
            return None
        return results_dir / "heatmaps" / job_name(flatten_dict(container))


class KShotBenchmark(Benchmark):
    """anomalib's benchmark pipeline running :class:`KShotBenchmarkJob` jobs, ``protocol.n_jobs`` at once.

    With ``protocol.results_dir`` a run also writes ``results.csv`` there (every finished job of the grid, this
    run's and earlier ones'; results of jobs the grid or its limits no longer hold stay in ``jobs/`` but are left
    out) and appends its start, end and wall time to ``runs.json``.
    """

    def run(self, args: Namespace | None = None) -> None:
        """Run the grid (see the class docstring)."""
        start = time.time()
        config = self._get_args(args)
        super().run(args)
        protocol = Protocol.from_config(config.get("protocol"))
        if protocol.results_dir is None:
            return
        folder = Path(protocol.results_dir)
        generator = KShotBenchmarkJobGenerator(config.get("accelerator", "cpu"), protocol)
        names = {job_name(flatten_dict(point)) for point in generator.grid_points(config.get("benchmark", {}))}
        rows = [json.loads(path.read_text()) for path in sorted((folder / "jobs").glob("*.json")) if path.stem in names]
        pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)
        runs_file = folder / "runs.json"
        runs = json.loads(runs_file.read_text()) if runs_file.is_file() else []
        end = time.time()
        runs.append({"start": time.ctime(start), "end": time.ctime(end), "wall_s": round(end - start, 1)})
        _write_json(runs_file, runs)

    @staticmethod
    def _setup_runners(args: dict) -> list[Runner]:
        accelerator = args.get("accelerator", "cpu")
        if accelerator not in {"cpu", "cuda"}:
            msg = f"Unsupported accelerator {accelerator!r}: use 'cpu' or 'cuda'."
            raise ValueError(msg)
        protocol = Protocol.from_config(args.get("protocol"))
        if accelerator == "cuda" and protocol.n_jobs > max(1, torch.cuda.device_count()):
            msg = f"protocol.n_jobs={protocol.n_jobs} CUDA jobs need as many GPUs; {torch.cuda.device_count()} found."
            raise ValueError(msg)
        if protocol.register_packaged_weights:
            register_packaged_timm_weights()
        generator = KShotBenchmarkJobGenerator(accelerator, protocol)
        if protocol.n_jobs == 1:
            return [SerialRunner(generator)]
        return [ParallelRunner(generator, n_jobs=protocol.n_jobs)]


def main() -> None:
    """Command-line entry: ``python -m pcsnet_anomalib.benchmark --config <file>``."""
    import pcsnet_anomalib  # noqa: F401  (registers Pcsnet and the k-shot datamodules on anomalib)

    logging.getLogger("pcsnet_anomalib").setLevel(logging.INFO)  # k-shot choices and job results in the log
    KShotBenchmark().run(KShotBenchmark.get_parser().parse_args())
