"""Acceptance test: every model the package registers passes anomalib's model contract with default arguments.

The same sequence anomalib's own integration tests (``tests/integration/model/test_models.py``) run for its
built-in models: ``get_model(name)`` with no arguments, ``MVTecAD(category="dummy", train_batch_size=2)`` and
``Engine(logger=False, max_epochs=1, devices=1)``; ``fit`` writes one checkpoint, then ``test``, ``train``,
``validate``, ``predict`` and ``export`` (torch, ONNX, OpenVINO) each build a fresh model, datamodule and
engine and read that checkpoint. The data is a generated MVTec-layout category with 5 normal training images.
Beyond "it runs": metrics are finite, every test image gets a finite score and map, ``fit``'s checkpoint is left
untouched by the later steps, and each export is loaded with its own runtime and run on a test image.

The default backbones load pretrained weights from the Hugging Face hub, which CI cannot reach. The defaults
stay as they are: the test writes random weights for each default backbone into a local hub cache, in the
layout ``huggingface_hub`` reads, and puts the hub in offline mode, so the models load those weights through
the ordinary ``pretrained=True`` path (checked tensor by tensor; without the cache, building a model raises).
"""

import importlib
import inspect
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import timm
import torch
from anomalib.data import MVTecAD
from anomalib.data.utils import read_image
from anomalib.deploy import ExportType
from anomalib.engine import Engine
from anomalib.models import AnomalibModule, get_model, list_models
from anomalib.utils.path import convert_to_snake_case
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors.torch import save_file

import pcsnet_anomalib  # noqa: F401  (registers the package's models with anomalib)
from pcsnet_anomalib._plugin import MODELS
from tests.conftest import write_mvtec_dataset
from tests.integration.export_parity import raw_scores, run_export

pytestmark = pytest.mark.slow

MODEL_NAMES = sorted(MODELS)
CATEGORY = "dummy"
N_TRAIN = 5
TRAIN_BATCH_SIZE = 2
N_TEST_GOOD = 2
N_TEST_DEFECT = 2
RANDOM_WEIGHTS_SEED = 1234
SNAPSHOT_COMMIT = "0" * 40
"""Commit hash of the fake hub snapshot (any 40 hex digits; ``refs/<revision>`` names it)."""
EXPORT_FILES = {
    ExportType.TORCH: ("torch/model.pt",),
    ExportType.ONNX: ("onnx/model.onnx",),
    ExportType.OPENVINO: ("openvino/model.xml", "openvino/model.bin"),
}
"""Files each export writes, relative to ``<export_root>/weights``."""
MAX_RELATIVE_ERROR = 1e-3
"""Relative L2 error of an export's outputs vs. the checkpoint's torch model: a sanity bound (measured: 0 for
torch, about 1e-6 for ONNX and OpenVINO in float32)."""


def _model_class(name: str) -> type[AnomalibModule]:
    module_name, _, attribute = MODELS[name].partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def _default(name: str, parameter: str) -> object:
    """Default of ``parameter`` in the ``__init__`` of registered model ``name`` (``None`` if it has none)."""
    found = inspect.signature(_model_class(name)).parameters.get(parameter)
    return None if found is None else found.default


def _model_backbones(name: str) -> list[str]:
    """The default of every ``backbone`` / ``*_backbone`` argument of registered model ``name``, in order.

    One for Pcsnet (``backbone``), two for Pfm and Pefm (``source_backbone``, ``target_backbone``).
    """
    parameters = inspect.signature(_model_class(name)).parameters.values()
    return [
        parameter.default
        for parameter in parameters
        if (parameter.name == "backbone" or parameter.name.endswith("_backbone")) and isinstance(parameter.default, str)
    ]


def _default_backbones() -> set[str]:
    """The default backbones of every registered model's ``__init__`` (models without one need none)."""
    return {backbone for name in MODEL_NAMES for backbone in _model_backbones(name)}


def _write_random_hub_weights(cache: Path, backbone: str) -> dict[str, torch.Tensor]:
    """Write random weights for timm model ``backbone`` where ``pretrained=True`` looks for them; return them.

    A ``huggingface_hub`` cache holds ``models--<org>--<name>/refs/<revision>`` (a commit hash) and
    ``models--<org>--<name>/snapshots/<commit>/<file>``; timm asks for ``model.safetensors`` first.
    """
    cfg = timm.models.get_pretrained_cfg(backbone)
    if cfg is None or not cfg.hf_hub_id:
        msg = f"timm has no Hugging Face hub source for {backbone!r}: teach this test where its weights come from."
        raise ValueError(msg)
    repo_id, _, revision = cfg.hf_hub_id.partition("@")
    filename = cfg.hf_hub_filename or "model.safetensors"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        state = {key: value.contiguous() for key, value in timm.create_model(backbone).state_dict().items()}
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / SNAPSHOT_COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / (revision or "main")).write_text(SNAPSHOT_COMMIT)
    if filename.endswith(".safetensors"):
        save_file(state, snapshot / filename)
    else:
        torch.save(state, snapshot / filename)
    return state


def _use_hub_cache(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    """Offline Hugging Face hub reading ``cache``.

    ``huggingface_hub`` reads ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` from the environment once, when it is
    imported (before this test runs); ``hf_hub_download`` then uses ``huggingface_hub.constants`` at call
    time, so those are patched too. The environment variables cover any subprocess.
    """
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@dataclass(frozen=True)
class OfflineHub:
    """The local hub cache and the random weights written into it, by backbone name."""

    cache: Path
    weights: dict[str, dict[str, torch.Tensor]]


@pytest.fixture(scope="module")
def offline_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OfflineHub]:
    cache = tmp_path_factory.mktemp("hf_hub_cache")
    weights = {backbone: _write_random_hub_weights(cache, backbone) for backbone in sorted(_default_backbones())}
    with pytest.MonkeyPatch.context() as monkeypatch:
        _use_hub_cache(monkeypatch, cache)
        monkeypatch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))
        # Whatever is written to the working directory (an OpenVINO cache, stray results) stays out of the checkout.
        monkeypatch.chdir(tmp_path_factory.mktemp("workdir"))
        yield OfflineHub(cache, weights)


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<tmp>/mvtecad`` with category ``dummy``: 5 normal training images, 2 normal and 2 defective test images."""
    root = tmp_path_factory.mktemp("datasets") / "mvtecad"
    return write_mvtec_dataset(
        root, category=CATEGORY, n_train=N_TRAIN, n_test_good=N_TEST_GOOD, n_test_defect=N_TEST_DEFECT
    )


@dataclass(frozen=True)
class Fitted:
    """What ``fit`` left behind for one model: where it wrote the checkpoint and how training went."""

    registered_name: str
    model_name: str
    dataset_root: Path
    project: Path
    checkpoint: Path
    checkpoint_stat: tuple[int, int] | None
    best_model_path: str
    current_epoch: int
    num_training_batches: float
    n_train: int


def _objects(model_name: str, dataset_root: Path, project: Path) -> tuple[AnomalibModule, MVTecAD, Engine]:
    """A fresh default model, datamodule and engine, built as anomalib's ``_get_objects`` builds them."""
    model = get_model(model_name)
    datamodule = MVTecAD(root=dataset_root, category=CATEGORY, train_batch_size=TRAIN_BATCH_SIZE)
    engine = Engine(logger=False, default_root_dir=project, max_epochs=1, devices=1)
    return model, datamodule, engine


def _checkpoint_stat(path: Path) -> tuple[int, int] | None:
    return (path.stat().st_size, path.stat().st_mtime_ns) if path.is_file() else None


@pytest.fixture(scope="module", params=MODEL_NAMES)
def fitted(
    request: pytest.FixtureRequest,
    offline_hub: OfflineHub,
    dataset_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Fitted]:
    """``engine.fit`` once per registered model; every later step reads the checkpoint it wrote.

    The project folder (default backbones: several checkpoints and exports of ~100 MB) is deleted when the
    model's tests are done, so that the suite's disk use does not grow with the number of models.
    """
    model_name = convert_to_snake_case(request.param)
    project = tmp_path_factory.mktemp(f"project_{model_name}")
    model, datamodule, engine = _objects(model_name, dataset_root, project)
    engine.fit(model=model, datamodule=datamodule)
    # Where anomalib's test reads it: Engine.fit creates <root>/<model>/<dataset>/<category>/v0 (a new
    # version per fit; `latest` links to it) and its ModelCheckpoint writes weights/lightning/model.ckpt there.
    checkpoint = project / model.name / datamodule.name / CATEGORY / "v0" / "weights" / "lightning" / "model.ckpt"
    yield Fitted(
        registered_name=request.param,
        model_name=model_name,
        dataset_root=dataset_root,
        project=project,
        checkpoint=checkpoint,
        checkpoint_stat=_checkpoint_stat(checkpoint),
        best_model_path=engine.trainer.checkpoint_callback.best_model_path,
        current_epoch=engine.trainer.current_epoch,
        num_training_batches=engine.trainer.num_training_batches,
        n_train=len(datamodule.train_data),
    )
    shutil.rmtree(project, ignore_errors=True)


def _fresh(fitted: Fitted) -> tuple[AnomalibModule, MVTecAD, Engine]:
    return _objects(fitted.model_name, fitted.dataset_root, fitted.project)


def _assert_checkpoint_untouched(fitted: Fitted) -> None:
    assert _checkpoint_stat(fitted.checkpoint) == fitted.checkpoint_stat, "a later step rewrote fit's checkpoint"


def _assert_finite_metrics(results: object, required: tuple[str, ...] = ()) -> dict[str, float]:
    assert isinstance(results, list), results
    assert len(results) == 1, results  # one dataloader
    metrics = {key: float(value) for key, value in results[0].items()}
    not_finite = {key: value for key, value in metrics.items() if not math.isfinite(value)}
    assert not not_finite, f"non-finite metrics: {not_finite}"
    for key in required:
        assert key in metrics, f"{key} missing from {sorted(metrics)}"
        assert 0.0 <= metrics[key] <= 1.0, f"{key} = {metrics[key]}"
    return metrics


def _test_images(dataset_root: Path) -> list[Path]:
    return sorted((dataset_root / CATEGORY / "test").rglob("*.png"))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_is_registered_with_anomalib(name: str) -> None:
    assert name in list_models(case="pascal")
    assert convert_to_snake_case(name) in list_models()  # the names anomalib's own test iterates over
    assert _model_class(name) in AnomalibModule.__subclasses__()  # what get_model(name) searches


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_default_backbone_loads_the_offline_hub_weights(
    name: str, offline_hub: OfflineHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default model really loads the cache's random weights for each backbone; without them, building fails."""
    backbones, pre_trained = _model_backbones(name), _default(name, "pre_trained")
    if not backbones or pre_trained is False:
        pytest.skip(f"{name} loads no pretrained backbone by default")
    model = get_model(convert_to_snake_case(name))
    for backbone in backbones:
        saved = offline_hub.weights[backbone]
        architecture = timm.models.split_model_name_tag(backbone)[0]
        extractors = [
            module
            for module in model.modules()
            if (getattr(module, "pretrained_cfg", None) or {}).get("architecture") == architecture
        ]
        assert extractors, f"no timm {architecture} module in the default {name}"
        for extractor in extractors:
            state = extractor.state_dict()
            missing = sorted(set(state) - set(saved))
            assert not missing, f"{backbone} tensors not in the saved weights (renamed by timm?): {missing[:5]}"
            differing = [key for key, value in state.items() if not torch.equal(value, saved[key])]
            assert not differing, f"{backbone} tensors that are not the offline weights: {differing[:5]}"

    # A cache without the weights must make the default model fail, not fall back to random initialisation.
    _use_hub_cache(monkeypatch, tmp_path / "empty_hub_cache")
    with pytest.raises(LocalEntryNotFoundError):
        get_model(convert_to_snake_case(name))


def test_fit(fitted: Fitted) -> None:
    assert fitted.checkpoint.is_file(), f"no checkpoint at {fitted.checkpoint}"
    assert Path(fitted.best_model_path).resolve() == fitted.checkpoint.resolve()
    assert fitted.current_epoch == 1  # max_epochs
    assert fitted.n_train == N_TRAIN
    assert fitted.num_training_batches == math.ceil(N_TRAIN / TRAIN_BATCH_SIZE)  # the datamodule's batch size


def test_test(fitted: Fitted) -> None:
    model, datamodule, engine = _fresh(fitted)
    results = engine.test(model=model, datamodule=datamodule, ckpt_path=fitted.checkpoint)
    _assert_finite_metrics(results, required=("image_AUROC", "pixel_AUROC"))
    _assert_checkpoint_untouched(fitted)


def test_train(fitted: Fitted) -> None:
    model, datamodule, engine = _fresh(fitted)
    results = engine.train(model=model, datamodule=datamodule, ckpt_path=fitted.checkpoint)
    _assert_finite_metrics(results, required=("image_AUROC", "pixel_AUROC"))
    _assert_checkpoint_untouched(fitted)


def test_validate(fitted: Fitted) -> None:
    model, datamodule, engine = _fresh(fitted)
    results = engine.validate(model=model, datamodule=datamodule, ckpt_path=fitted.checkpoint)
    _assert_finite_metrics(results)  # anomalib's default evaluator has no validation metrics: often [{}]
    assert sum(engine.trainer.num_val_batches) > 0
    # What validation is for: the post-processor's adaptive thresholds, computed on the validation images.
    for threshold in ("image_threshold", "pixel_threshold"):
        if hasattr(model.post_processor, threshold):
            value = getattr(model.post_processor, threshold)
            assert torch.isfinite(value).all(), f"{threshold} = {value}"
    _assert_checkpoint_untouched(fitted)


def test_predict(fitted: Fitted) -> None:
    model, datamodule, engine = _fresh(fitted)
    batches = engine.predict(model=model, ckpt_path=fitted.checkpoint, datamodule=datamodule)
    assert batches is not None
    items = [item for batch in batches for item in batch]
    predicted = sorted(Path(item.image_path).resolve() for item in items)
    assert predicted == [path.resolve() for path in _test_images(fitted.dataset_root)]
    for item in items:
        assert item.pred_score is not None, item.image_path
        assert item.pred_score.numel() == 1, item.pred_score.shape
        assert torch.isfinite(item.pred_score).all(), item.image_path
        assert item.pred_label is not None, item.image_path
        assert item.anomaly_map is not None, item.image_path
        anomaly_map = item.anomaly_map.squeeze()
        assert anomaly_map.ndim == 2, item.anomaly_map.shape
        assert min(anomaly_map.shape) > 1, item.anomaly_map.shape
        assert torch.isfinite(anomaly_map).all(), item.image_path
    _assert_checkpoint_untouched(fitted)


@dataclass(frozen=True)
class Reference:
    """One defective test image and what the checkpoint's model (loaded as ``engine.export`` loads it) returns."""

    images: torch.Tensor
    outputs: dict[str, np.ndarray]
    model: AnomalibModule


@pytest.fixture(scope="module")
def reference(fitted: Fitted) -> Reference:
    defective = next(path for path in _test_images(fitted.dataset_root) if path.parent.name != "good")
    images = read_image(defective, as_tensor=True).unsqueeze(0)  # float in [0, 1], 64 px: the model resizes
    model = _model_class(fitted.registered_name).load_from_checkpoint(fitted.checkpoint).eval()
    with torch.no_grad():
        output = model(images)
    return Reference(images, {field: getattr(output, field).numpy() for field in ("pred_score", "anomaly_map")}, model)


def _comparable(reference: Reference, field: str, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An export's output and the model's, image scores taken before the post-processor's normalisation.

    After one epoch on 5 images a model's validation scores can span almost nothing (Prn's, about 1e-4: its model
    README, "Known problem"), and the min-max normalisation then multiplies float32 rounding by thousands, so the
    normalised scores would compare that span, not the export. Scores clamped to 0 or 1 are compared as they are.
    """
    wanted = reference.outputs[field]
    if field != "pred_score" or not bool(((wanted > 0) & (wanted < 1)).all()):
        return actual, wanted
    return raw_scores(reference.model, actual), raw_scores(reference.model, wanted)


@pytest.mark.parametrize("export_type", list(EXPORT_FILES), ids=lambda export_type: export_type.value)
def test_export(fitted: Fitted, reference: Reference, export_type: ExportType) -> None:
    model, _, engine = _fresh(fitted)
    path = engine.export(model=model, ckpt_path=fitted.checkpoint, export_type=export_type)
    assert path is not None
    weights = fitted.project / "weights"  # no export_root: the engine's default_root_dir
    expected = [weights / relative for relative in EXPORT_FILES[export_type]]
    assert Path(path).resolve() == expected[0].resolve()
    for file in expected:
        assert file.is_file(), f"{export_type.value} export wrote no {file}"
        assert file.stat().st_size > 0, file

    outputs = run_export(Path(path), export_type.value, reference.images)
    for field, wanted in reference.outputs.items():
        assert field in outputs, f"{export_type.value} export has no {field} output: {sorted(outputs)}"
        actual = outputs[field]
        assert np.isfinite(actual).all(), f"{export_type.value} {field} is not finite"
        assert actual.shape == wanted.shape, f"{export_type.value} {field}: {actual.shape} != {wanted.shape}"
        compared, expected_values = _comparable(reference, field, actual)
        error = float(np.linalg.norm(compared - expected_values) / max(float(np.linalg.norm(expected_values)), 1e-12))
        assert error < MAX_RELATIVE_ERROR, f"{export_type.value} {field}: relative L2 error {error:.2e}"
    anomaly_map = outputs["anomaly_map"]
    assert anomaly_map.shape[0] == 1, anomaly_map.shape  # one image in, one map out
    assert np.squeeze(anomaly_map, axis=0).squeeze().ndim == 2, anomaly_map.shape
    _assert_checkpoint_untouched(fitted)
