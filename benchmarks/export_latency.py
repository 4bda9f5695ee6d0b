"""Per-image CPU latency of one trained model in torch eager, ONNX Runtime and OpenVINO, and their parity.

In one run: train Pcsnet briefly on the offline demo data (or load a trained Pcsnet or Prn, ``--ckpt``), export
it to ONNX and OpenVINO through ``Engine.export``, then time batch-1 inference of the whole exported graph
(anomalib pre-processing, model, post-processing) on the same images in each runtime, and report
the relative L2 error of each runtime's anomaly maps and scores against torch eager and whether
the predicted labels agree. OpenVINO runs in float32 (``INFERENCE_PRECISION_HINT=f32``) and, for
reference, with the CPU plugin's default precision (bfloat16 on CPUs that have it).

    python benchmarks/export_latency.py                       # demo model: EfficientNet-Lite0, 224 x 224
    python benchmarks/export_latency.py --backbone wide_resnet50_2 --epochs 0   # the paper's backbone, random
    anomalib train --config configs/prn_demo.yaml                                # then Prn's exports of that fit:
    python benchmarks/export_latency.py --model Prn --version 2 --category plate \
        --ckpt results/Prn/KShotPcsnetDemo/plate/latest/weights/lightning/model.ckpt

``--epochs 0`` skips training and builds the prototypes from the k training images only (same
architecture and cost; scores are then those of an untrained model).
"""

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from anomalib.data.utils import read_image
from anomalib.deploy import ExportType
from anomalib.engine import Engine
from anomalib.models.components import AnomalibModule

from pcsnet_anomalib import KShotPcsnetDemo, Pcsnet, Prn
from pcsnet_anomalib.backbones import TF_EFFICIENTNET_LITE0_LAYERS

MODELS: dict[str, type[AnomalibModule]] = {"Pcsnet": Pcsnet, "Prn": Prn}
"""The models whose checkpoints ``--ckpt`` loads; only Pcsnet is trained here (Prn needs real anomalies and epochs)."""


def _build(args: argparse.Namespace) -> AnomalibModule:
    if args.ckpt:
        return MODELS[args.model].load_from_checkpoint(args.ckpt)
    if args.model != "Pcsnet":
        msg = f"--model {args.model} needs --ckpt, a trained checkpoint (anomalib train --config configs/prn_demo.yaml)"
        raise SystemExit(msg)
    if args.backbone == "tf_efficientnet_lite0":
        backbone = {"backbone": "tf_efficientnet_lite0", "layers": list(TF_EFFICIENTNET_LITE0_LAYERS)}
        backbone |= {"pre_trained": False, "backbone_weights": "package:efficientnet_lite0"}
    else:
        backbone = {"backbone": args.backbone, "pre_trained": False}
    return Pcsnet(**backbone)


def _time(function: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(actual.reshape(expected.shape) - expected) / max(np.linalg.norm(expected), 1e-12))


def main() -> None:
    """Command line: train a Pcsnet or load a checkpoint, export it, time each runtime, print latency and parity."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs on the demo data (0: none)")
    parser.add_argument("--model", choices=sorted(MODELS), default="Pcsnet", help="the class of --ckpt")
    parser.add_argument("--ckpt", help="a trained checkpoint of --model instead of training a Pcsnet here")
    parser.add_argument("--category", default="brick", help="demo category whose test images are timed and compared")
    parser.add_argument("--version", type=int, default=1, help="demo data version of --category")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    import onnxruntime
    import openvino

    work = Path(tempfile.mkdtemp(prefix="pcsnet-export-latency-"))
    datamodule = KShotPcsnetDemo(
        category=args.category, version=args.version, k_shot=8, train_batch_size=2, num_workers=0, eval_batch_size=8
    )
    model = _build(args)
    engine = Engine(default_root_dir=work, max_epochs=max(args.epochs, 1), accelerator="cpu", devices=1, logger=False)
    if not args.ckpt:
        if args.epochs > 0:
            engine.fit(model, datamodule=datamodule)
        else:
            datamodule.setup()
            chosen = datamodule.few_shot_paths or []  # the k images training would use
            images = model.pre_processor.transform(torch.stack([read_image(p, as_tensor=True) for p in chosen]))
            with torch.no_grad():
                model.model.initialize_prototypes(model.model.describe(images).sum(dim=0), len(images))
    model.eval()

    onnx_path = engine.export(model, ExportType.ONNX, export_root=work / "export")
    openvino_path = engine.export(model, ExportType.OPENVINO, export_root=work / "export")
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    core = openvino.Core()
    openvino_f32 = core.compile_model(str(openvino_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    openvino_default = core.compile_model(str(openvino_path), "CPU")
    default_precision = openvino_default.get_property("INFERENCE_PRECISION_HINT")

    test_paths = sorted((Path(datamodule.root) / args.category / "test").rglob("*.png"))
    images = [read_image(path, as_tensor=True).unsqueeze(0) for path in test_paths]
    sample = images[0]

    def torch_eager() -> object:
        with torch.inference_mode():
            return model(sample)

    runtimes: dict[str, Callable[[torch.Tensor], dict[str, np.ndarray]]] = {
        "ONNX Runtime": lambda x: dict(
            zip([o.name for o in session.get_outputs()], session.run(None, {input_name: x.numpy()}), strict=True)
        ),
        "OpenVINO f32": lambda x: {o.any_name: v for o, v in openvino_f32(x.numpy()).items()},
        f"OpenVINO default ({default_precision})": lambda x: {
            o.any_name: v for o, v in openvino_default(x.numpy()).items()
        },
    }
    latency = {"torch eager": _time(torch_eager, args.repeats)}
    for name, run in runtimes.items():
        latency[name] = _time(lambda run=run: run(sample), args.repeats)

    size = tuple(sample.shape[-2:])
    print(f"{type(model).__name__} {model.hparams['backbone']}, input {size} resized to the model's size, ", end="")
    print(f"batch 1, {args.threads} threads, median of {args.repeats} after 1 warm-up; {len(images)} test images.")
    print("| runtime | latency (ms/image) | speed-up vs torch | max rel. L2 map | max rel. L2 score | labels equal |")
    print("|---|---|---|---|---|---|")
    with torch.inference_mode():
        reference = [model(image) for image in images]
    print(f"| torch eager | {latency['torch eager'] * 1000:.1f} | 1.00x | 0 | 0 | yes |")
    for name, run in runtimes.items():
        outputs = [run(image) for image in images]
        map_error = max(
            _relative_error(o["anomaly_map"], r.anomaly_map.numpy()) for o, r in zip(outputs, reference, strict=True)
        )
        score_error = max(
            _relative_error(o["pred_score"], r.pred_score.numpy()) for o, r in zip(outputs, reference, strict=True)
        )
        labels_equal = all(
            np.array_equal(o["pred_label"], r.pred_label.numpy()) for o, r in zip(outputs, reference, strict=True)
        )
        ratio = latency["torch eager"] / latency[name]
        print(
            f"| {name} | {latency[name] * 1000:.1f} | {ratio:.2f}x | {map_error:.1e} | {score_error:.1e} | "
            f"{'yes' if labels_equal else 'NO'} |"
        )


if __name__ == "__main__":
    main()
