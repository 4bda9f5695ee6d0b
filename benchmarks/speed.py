"""Speed and memory of PCSNet against the official modules and anomalib's Cfa, Patchcore and Padim.

One run, one machine, same random inputs and random backbone weights (float32, nothing downloaded):
inference latency at batch 1, throughput at batch ``--throughput-batch``, one training step at
batch ``--train-batch`` (PCSNet and the official modules: three views, losses, backward, Adam),
peak memory, FLOPs per image (``torch.utils.flop_counter``) and the share of this machine's
float32 matmul rate (measured in the same run) that each model achieves.

Each measurement runs in its own subprocess so that its peak resident memory (``ru_maxrss``)
is its own; the table shows the peak and its increase over the model's set-up.

    python benchmarks/speed.py --authors-code /tmp/pcsnet-authors --output benchmarks/results/speed_cpu.md
    python benchmarks/speed.py --image-size 64 --backbone resnet18 --models pcsnet padim  # quick check

``--authors-code`` (a checkout of github.com/yuxin-jiang/PCSNet) is optional; their modules are
fixed to WideResNet-50-2 at 224 px. Their ``AddCoords`` calls ``.cuda()``; that is switched off
at run time, their files are not modified. anomalib's Cfa always loads torchvision's pretrained
weights; here its extractor is built with random weights instead.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F  # noqa: N812
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
# The fast CPU preset (coarser grid, narrower CAS, shorter prior), as shipped for anomalib's CLI.
_FAST_CONFIG = yaml.safe_load((REPO / "configs" / "mvtec_ad_fast.yaml").read_text())["model"]["init_args"]
FAST_PRESET = {name: _FAST_CONFIG[name] for name in ("grid_stride", "cas_channels", "prior_channels")}
MODELS = ("pcsnet", "pcsnet-fast", "authors", "cfa", "patchcore", "padim")
TRAINABLE = ("pcsnet", "pcsnet-fast", "authors")
FIT_IMAGES = 4


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class _Bench:
    """A model ready to run: ``infer(images)`` and, for the trainable ones, ``train_step(...)``."""

    infer: Callable[[torch.Tensor], object]
    train_step: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], object] | None = None


def _build_pcsnet(args: argparse.Namespace, fit: torch.Tensor, **kwargs: object) -> _Bench:
    from pcsnet_anomalib.models.pcsnet import PcsnetLoss, PcsnetModel

    model = PcsnetModel(backbone=args.backbone, pre_trained=False, **kwargs).train()
    with torch.no_grad():
        model.initialize_prototypes(model.describe(fit).sum(dim=0), fit.shape[0])
    loss_fn = PcsnetLoss()
    optimizer = torch.optim.Adam(
        [
            {"params": [model.radius, *model.descriptor.parameters()], "lr": 1e-3},
            {"params": model.cas.parameters(), "lr": 1e-4},
        ],
        weight_decay=1e-5,
        amsgrad=True,
    )
    bench = _Bench()

    def infer(images: torch.Tensor) -> object:
        model.eval()
        with torch.no_grad():
            return model(images).anomaly_map

    def train_step(images: torch.Tensor, anomalous: torch.Tensor, mask: torch.Tensor, mixed: torch.Tensor) -> object:
        model.train()
        outputs = model.training_outputs(images, anomalous, mixed)
        loss = loss_fn(outputs, model.radius, mask, mixed)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    bench.infer, bench.train_step = infer, train_step
    return bench


def _build_authors(args: argparse.Namespace, fit: torch.Tensor) -> _Bench:
    """Their backbone, adaptor and CAS, driven as their ``main.py`` drives them."""
    if args.image_size != 224 or args.backbone != "wide_resnet50_2":
        msg = "The official modules are fixed to wide_resnet50_2 at 224 px."
        raise ValueError(msg)
    # tools/ is not installed: importable from a checkout (editable install, or PYTHONPATH=<repository root>).
    from tools.parity_mapping import import_authors_modules

    authors = import_authors_modules(args.authors_code)
    backbone = authors.backbone(pretrained=False).eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def features(images: torch.Tensor) -> list[torch.Tensor]:
        return backbone((images - mean) / std)  # their loader normalises; done here for both sides

    adaptor = authors.adaptor(features, [(fit, None, None, None, None, None)], 1, "cpu", "bottle")
    cas = authors.casnet()
    optimizer = torch.optim.Adam(
        [{"params": adaptor.parameters(), "lr": 0.001}, {"params": cas.parameters(), "lr": 0.0001}],
        weight_decay=1e-5,
        amsgrad=True,
    )
    mse, cross_entropy = nn.MSELoss(), nn.CrossEntropyLoss(reduction="sum")
    bench = _Bench()

    def infer(images: torch.Tensor) -> object:
        adaptor.eval()
        cas.eval()
        with torch.no_grad():
            score, guide = adaptor(features(images), 2, None)
            heatmap = cas(guide, score).mean(dim=1)
        return authors.gaussian_smooth(heatmap.numpy(), sigma=4)

    def train_step(images: torch.Tensor, anomalous: torch.Tensor, mask: torch.Tensor, mixed: torch.Tensor) -> object:
        adaptor.train()
        cas.train()
        mixed_images = torch.where(mixed.view(-1, 1, 1, 1), anomalous, images)
        grid_mask = F.interpolate(mask, size=(64, 64), mode="bilinear")
        optimizer.zero_grad()
        with torch.no_grad():
            normal_features, anomalous_features, mixed_features = (
                features(images),
                features(anomalous),
                features(mixed_images),
            )
        l_nfc, _, _, _ = adaptor(normal_features, 0, grid_mask)
        l_afs, _, _, _ = adaptor(anomalous_features, 1, grid_mask)
        _, image_scores, mixed_score, mixed_guide = adaptor(mixed_features, 2, grid_mask)
        out = cas(mixed_guide, mixed_score)
        l_seg = mse(out, mask * mixed.view(-1, 1, 1, 1))
        l_pdc = cross_entropy(image_scores.squeeze(), mixed.float())
        loss = l_nfc + l_afs + l_pdc * 50 + l_seg * 40
        loss.backward()
        optimizer.step()
        return loss

    bench.infer, bench.train_step = infer, train_step
    return bench


def _random_torchvision_extractor(backbone: str, return_nodes: list[str]) -> nn.Module:
    """Build anomalib's Cfa extractor with random weights (its own loads pretrained ones)."""
    import torchvision
    from torchvision.models.feature_extraction import create_feature_extractor

    model = getattr(torchvision.models, backbone)(weights=None)
    return create_feature_extractor(model=model, return_nodes=return_nodes).eval()


def _build_anomalib(name: str, args: argparse.Namespace, fit: torch.Tensor) -> _Bench:
    """Cfa, Patchcore or Padim with random weights, fitted on ``fit``."""
    if name == "cfa":
        from anomalib.models.image.cfa import torch_model as cfa

        cfa.get_feature_extractor = _random_torchvision_extractor
        model = cfa.CfaModel(args.backbone, 1, 1, 3, 3, 1e-5)
        model.initialize_centroid([SimpleNamespace(image=fit)])
    elif name == "patchcore":
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel

        model = PatchcoreModel(layers=["layer2", "layer3"], backbone=args.backbone, pre_trained=False).train()
        with torch.no_grad():
            model(fit)
        model.subsample_embedding(0.1)
    else:
        from anomalib.models.image.padim.torch_model import PadimModel

        model = PadimModel(backbone=args.backbone, pre_trained=False).train()
        with torch.no_grad():
            model(fit)
        model.fit()
    model.eval()
    bench = _Bench()

    def infer(images: torch.Tensor) -> object:
        with torch.no_grad():
            return model(images).anomaly_map

    bench.infer = infer
    return bench


def _build(name: str, args: argparse.Namespace, fit: torch.Tensor) -> _Bench:
    if name == "pcsnet":
        return _build_pcsnet(args, fit)
    if name == "pcsnet-fast":
        return _build_pcsnet(args, fit, **FAST_PRESET)
    if name == "authors":
        return _build_authors(args, fit)
    return _build_anomalib(name, args, fit)


def measure(args: argparse.Namespace) -> dict[str, object]:
    """One model, one kind of measurement (``infer1``, ``throughput`` or ``train``), in this process."""
    torch.manual_seed(args.seed)
    size = args.image_size
    fit = torch.rand(FIT_IMAGES, 3, size, size)
    bench = _build(args.model, args, fit)
    if args.kind == "infer1":
        batch = 1
    elif args.kind == "throughput":
        batch = args.throughput_batch
    else:
        batch = args.train_batch
    images = torch.rand(batch, 3, size, size)
    anomalous = images.clone()
    side = size // 4
    anomalous[:, :, side : 2 * side, side : 2 * side] = torch.rand(batch, 3, side, side)
    mask = torch.zeros(batch, 1, size, size)
    mask[:, :, side : 2 * side, side : 2 * side] = 1.0
    mixed = torch.zeros(batch, dtype=torch.bool)
    mixed[: (batch + 1) // 2] = True

    def run() -> object:
        if args.kind == "train":
            if bench.train_step is None:
                msg = f"{args.model} has no training step here."
                raise ValueError(msg)
            return bench.train_step(images, anomalous, mask, mixed)
        return bench.infer(images)

    baseline = _max_rss_mib()
    load_before = os.getloadavg()[0]
    times = []
    for _ in range(args.warmup + args.repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    peak = _max_rss_mib()
    load_after = os.getloadavg()[0]
    with FlopCounterMode(display=False) as counter:
        run()
    measured = times[args.warmup :]
    return {
        "model": args.model,
        "kind": args.kind,
        "batch": batch,
        "median_s": statistics.median(measured),
        "min_s": min(measured),
        "flops_per_image": counter.get_total_flops() / batch,
        "peak_rss_mib": peak,
        "rss_increase_mib": peak - baseline,
        "load": (load_before, load_after),
    }


def matmul_rate(size: int = 2048, repeats: int = 3) -> float:
    """This machine's float32 matmul rate in FLOP/s (best of ``repeats`` after one warm-up)."""
    a, b = torch.rand(size, size), torch.rand(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def _table(results: list[dict[str, object]], rate: float) -> str:
    reference = {r["kind"]: r["median_s"] for r in results if r["model"] == "authors"}
    rows = [
        (
            "| model | measurement | batch | median ms | min ms | images/s | GFLOP/image | share of matmul rate "
            "| peak RSS MiB | RSS increase MiB | speed-up vs official | load avg before/after |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        per_image = r["median_s"] / r["batch"]
        achieved = r["flops_per_image"] / per_image
        ratio = f"{reference[r['kind']] / r['median_s']:.2f}x" if r["kind"] in reference else "-"
        rows.append(
            f"| {r['model']} | {r['kind']} | {r['batch']} | {1000 * r['median_s']:.0f} | {1000 * r['min_s']:.0f} "
            f"| {1 / per_image:.2f} | {r['flops_per_image'] / 1e9:.1f} | {100 * achieved / rate:.0f}% "
            f"| {r['peak_rss_mib']:.0f} | {r['rss_increase_mib']:.0f} | {ratio} "
            f"| {r['load'][0]:.1f}/{r['load'][1]:.1f} |",
        )
    return "\n".join(rows)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authors-code", type=Path, help="checkout of yuxin-jiang/PCSNet (optional)")
    parser.add_argument("--models", nargs="+", choices=MODELS, help="default: all (authors only with --authors-code)")
    parser.add_argument("--kinds", nargs="+", choices=("infer1", "throughput", "train"), default=None)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--backbone", default="wide_resnet50_2")
    parser.add_argument("--throughput-batch", type=int, default=8)
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="also write the markdown table here")
    parser.add_argument("--model", help=argparse.SUPPRESS)  # child process: one measurement
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    return parser


def main() -> None:
    """Command line: run each measurement in its own subprocess (or, as that child, one) and print the table."""
    args = _parser().parse_args()
    if args.model:
        print("RESULT " + json.dumps(measure(args)))
        return
    if args.authors_code is not None and not (args.authors_code / "casnet.py").is_file():
        msg = f"--authors-code {args.authors_code} does not contain casnet.py (a yuxin-jiang/PCSNet checkout)."
        raise SystemExit(msg)
    models = args.models or [m for m in MODELS if m != "authors" or args.authors_code is not None]
    if "authors" in models and args.authors_code is None:
        msg = "--models authors needs --authors-code."
        raise SystemExit(msg)
    kinds = args.kinds or ["infer1", "throughput", "train"]
    rate = matmul_rate()
    passthrough = [
        f"--image-size={args.image_size}",
        f"--backbone={args.backbone}",
        f"--throughput-batch={args.throughput_batch}",
        f"--train-batch={args.train_batch}",
        f"--warmup={args.warmup}",
        f"--repeats={args.repeats}",
        f"--seed={args.seed}",
    ]
    if args.authors_code is not None:
        passthrough.append(f"--authors-code={args.authors_code.resolve()}")
    results = []
    for model in models:
        for kind in kinds:
            if kind == "train" and model not in TRAINABLE:
                continue
            command = [sys.executable, __file__, *passthrough, f"--model={model}", f"--kind={kind}"]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode != 0 or not lines:
                msg = f"{model} {kind} failed:\n{done.stderr[-3000:]}"
                raise SystemExit(msg)
            results.append(json.loads(lines[-1].removeprefix("RESULT ")))
            print(f"done: {model} {kind} {1000 * results[-1]['median_s']:.0f} ms", file=sys.stderr, flush=True)
    header = (
        f"{args.backbone} (random weights), {args.image_size} px, float32, warm-up {args.warmup} + "
        f"{args.repeats} timed runs (median), torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.machine()} with {os.cpu_count()} CPUs; float32 matmul rate {rate / 1e9:.0f} GFLOP/s "
        f"(2048x2048, best of 3). FAST_PRESET = {FAST_PRESET}."
    )
    report = header + "\n\n" + _table(results, rate)
    print(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report + "\n")


if __name__ == "__main__":
    main()
