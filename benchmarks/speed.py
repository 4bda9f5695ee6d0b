"""Speed and memory of PCSNet and PFM/PEFM against the authors' modules, and of anomalib's Cfa, Patchcore, Padim.

One run, one machine, same random inputs and random backbone weights (float32, nothing downloaded):
inference latency at batch 1, throughput at batch ``--throughput-batch``, one training step at
batch ``--train-batch`` (PCSNet and the official modules: three views, losses, backward, Adam),
peak memory, FLOPs per image (``torch.utils.flop_counter``) and the share of this machine's
float32 matmul rate (measured in the same run) that each model achieves.

Each measurement runs in its own subprocess so that its peak resident memory (``ru_maxrss``)
is its own; the table shows the peak and its increase over the model's set-up.

    python benchmarks/speed.py --authors-code /tmp/pcsnet-authors --output benchmarks/results/speed_cpu.md
    python benchmarks/speed.py --image-size 64 --backbone resnet18 --models pcsnet padim  # quick check
    python benchmarks/speed.py --models pfm authors-pfm pefm authors-pefm --pfm-authors-code /tmp/pfm-authors \
        --image-size 256 --train-batch 8 --output benchmarks/results/speed_pfm_cpu.md

``--authors-code`` (a checkout of github.com/yuxin-jiang/PCSNet) is optional; their modules are
fixed to WideResNet-50-2 at 224 px. Their ``AddCoords`` calls ``.cuda()``; that is switched off
at run time, their files are not modified. anomalib's Cfa always loads torchvision's pretrained
weights; here its extractor is built with random weights instead.

``pfm``/``pefm`` (MB-PFM and PEFM, :mod:`pcsnet_anomalib.models.pfm`) always use ResNet34 -> ResNet50, whatever
``--backbone`` says; ``authors-pfm``/``authors-pefm`` are the authors' ``DualProjectionNet`` (latent 200/400/900)
and ``DualProjectionWithPENet`` ("small", latent 200/400/800, position encoding) behind their ``PretrainedModel``
backbone split, driven as ``MB-PFM-ResNet.py`` and ``PEFM_AD.py`` drive them (``--pfm-authors-code``, a checkout
of github.com/smiler96/PFM-and-PEFM-for-Image-Anomaly-Detection-and-Segmentation, imported as
``tools/pfm_parity.py`` imports it). Both sides get the same random torchvision backbone weights; each model's speed-up
is against its own reference (``REFERENCE``), and when both sides of a pair are measured the table's header
gives the largest difference of their anomaly maps with the same projector weights.
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
MODELS = ("pcsnet", "pcsnet-fast", "authors", "cfa", "patchcore", "padim", "pfm", "authors-pfm", "pefm", "authors-pefm")
TRAINABLE = ("pcsnet", "pcsnet-fast", "authors", "pfm", "authors-pfm", "pefm", "authors-pefm")
# The model each row's speed-up is measured against; anomalib's models are set beside the official PCSNet modules.
REFERENCE = {
    **dict.fromkeys(("pcsnet", "pcsnet-fast", "authors", "cfa", "patchcore", "padim"), "authors"),
    **dict.fromkeys(("pfm", "authors-pfm"), "authors-pfm"),
    **dict.fromkeys(("pefm", "authors-pefm"), "authors-pefm"),
}
# Which checkout each authors' model needs: its command-line option and a file that identifies it.
AUTHORS_CODE = {
    "authors": ("authors_code", "casnet.py"),
    "authors-pfm": ("pfm_authors_code", "PEFM_AD.py"),
    "authors-pefm": ("pfm_authors_code", "PEFM_AD.py"),
}
# PFM/PEFM: the papers' ResNet34 -> ResNet50 at three levels on both sides. The authors' side is built from these
# settings of theirs (MB-PFM-ResNet.py:140, PEFM's published logs), ours from Pfm's and Pefm's own defaults.
PFM_BACKBONES = ("resnet34", "resnet50")
PFM_SETTINGS = {"pfm": ((200, 400, 900), False), "pefm": ((200, 400, 800), True)}
FIT_IMAGES = 4


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class _Bench:
    """A model ready to run: ``infer(images)`` and, for the trainable ones, ``train_step(...)``.

    ``mappings``: PFM/PEFM's per-level mapping networks, for copying weights between the two sides of a pair.
    """

    infer: Callable[[torch.Tensor], object]
    train_step: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], object] | None = None
    mappings: list[nn.Module] | None = None


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


def _random_resnet(name: str) -> Callable[..., nn.Module]:
    """Torchvision's ``name`` with random weights, whatever ``pretrained`` says (their ``PretrainedModel`` asks)."""
    import torchvision

    def build(pretrained: bool = False) -> nn.Module:
        del pretrained
        return getattr(torchvision.models, name)(weights=None)

    return build


def _pfm_backbones(seed: int) -> list[nn.Module]:
    """Torchvision's ResNet34 and ResNet50 with random weights drawn from ``seed``: the same on both sides."""
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [getattr(torchvision.models, name)(weights=None) for name in PFM_BACKBONES]


def _build_pfm(name: str, args: argparse.Namespace) -> _Bench:
    """Our Pfm/Pefm at its defaults (latent widths, encoding, learning rates), trained as ``Pfm.training_step`` does."""
    from pcsnet_anomalib.models.pfm import Pefm, Pfm, PfmTrainingOutput

    lightning_model = {"pfm": Pfm, "pefm": Pefm}[name](*PFM_BACKBONES, pre_trained=False, seed=args.seed)
    model = lightning_model.model
    extractors = (model.source_extractor, model.target_extractor)
    for extractor, backbone in zip(extractors, _pfm_backbones(args.seed), strict=True):
        missing = extractor.feature_extractor.load_state_dict(backbone.state_dict(), strict=False).missing_keys
        if missing:
            msg = f"The torchvision weights leave {missing} of the timm extractor unset."
            raise ValueError(msg)
    loss_fn = lightning_model.loss
    optimizer = lightning_model.configure_optimizers()
    bench = _Bench()

    def infer(images: torch.Tensor) -> object:
        model.eval()
        with torch.no_grad():
            return model(images).anomaly_map

    def train_step(images: torch.Tensor, *_: torch.Tensor) -> object:
        model.train()
        outputs = model(images)
        assert isinstance(outputs, PfmTrainingOutput)
        loss = loss_fn(outputs)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    bench.infer, bench.train_step, bench.mappings = infer, train_step, list(model.mappings)
    return bench


def _authors_split_key(key: str) -> str | None:
    """Their ``PretrainedModel`` key for a torchvision ResNet key (``block1`` = conv1, bn1; ``block2..5`` = layers)."""
    head, _, rest = key.partition(".")
    if head == "conv1":
        return f"block1.0.{rest}"
    if head == "bn1":
        return f"block1.1.{rest}"
    if head.startswith("layer"):
        return f"block{int(head.removeprefix('layer')) + 1}.{rest}"
    return None  # the classifier


def _build_authors_pfm(name: str, args: argparse.Namespace) -> _Bench:
    """Their projectors behind their backbone split, driven as ``MB-PFM-ResNet.py``/``PEFM_AD.py`` drive them.

    Training (``PEFM_AD.py:330-358``, ``MB-PFM-ResNet.py:190-218``): backbones in eval mode but outside
    ``no_grad``, features L2-normalised, then per level: projector on detached features, mean squared errors,
    its own Adam's zero_grad/backward/step, ``loss.item()`` (their logging). MB-PFM leaves level 1's targets
    attached (their bug B6), so its backward runs into both backbones' first blocks, whose gradients accumulate.
    Inference (``PEFM_AD.py:459-513``, ``MB-PFM-ResNet.py:319-366``): per level the channel sum of squared errors
    divided by ``var = 1``, upsampled and moved to numpy; the numpy mean of the three maps and its maximum.
    """
    import numpy as np

    # tools/ is not installed: importable from a checkout. Their definitions are executed from their files,
    # unmodified, without their scripts' module-level imports (tools/pfm_parity.py says why).
    from tools.pfm_parity import cuda_calls_stay_on_cpu, import_authors_modules, load_authors_definitions

    authors = import_authors_modules(args.pfm_authors_code)
    # Their backbone split resolves "resnet34"/"resnet50" by name (``eval``): random torchvision weights here,
    # replaced below by the weights our side gets.
    split = load_authors_definitions(
        args.pfm_authors_code / "PEFM_AD.py",
        ("PretrainedModel",),
        {"nn": nn, **{name: _random_resnet(name) for name in PFM_BACKBONES}},
    ).PretrainedModel
    agents = []
    for backbone_name, backbone in zip(PFM_BACKBONES, _pfm_backbones(args.seed), strict=True):
        agent = split(backbone_name)
        mapped = {_authors_split_key(key): value for key, value in backbone.state_dict().items()}
        agent.load_state_dict({key: value for key, value in mapped.items() if key is not None})
        agents.append(agent.eval())
    latent_dims, _ = PFM_SETTINGS[name.removeprefix("authors-")]
    widths = zip((64, 128, 256), (256, 512, 1024), latent_dims, (4, 8, 16), strict=True)  # R34 -> R50 per level
    torch.manual_seed(args.seed)
    if name == "authors-pfm":
        projectors = [authors.DualProjectionNet(in_dim=s, out_dim=t, latent_dim=d) for s, t, d, _ in widths]
        rates = (3e-3, 3e-4, 3e-4)
    else:
        size = args.image_size
        with cuda_calls_stay_on_cpu():  # their position encodings call .cuda() (bug B7)
            projectors = [
                authors.DualProjectionWithPENet(
                    size // r, size // r, in_dim=s, out_dim=t, latent_dim=d, dual_type="small", pe_required=True
                )
                for s, t, d, r in widths
            ]
        rates = (3e-4, 3e-4, 3e-4)
    optimizers = [
        torch.optim.Adam(projector.parameters(), lr=rate, weight_decay=1e-5)
        for projector, rate in zip(projectors, rates, strict=True)
    ]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    keys = ("out2", "out3", "out4")

    def agent_out(images: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        x = (images - mean) / std  # their loader normalises; done here for both sides
        out_a1, out_a2 = agents[0](x), agents[1](x)
        for key in out_a2:
            out_a1[key] = F.normalize(out_a1[key], p=2)
            out_a2[key] = F.normalize(out_a2[key], p=2)
        return out_a1, out_a2

    def infer(images: torch.Tensor) -> object:
        for projector in projectors:
            projector.eval()
        with torch.no_grad():
            _, _, height, width = images.shape
            out_a1, out_a2 = agent_out(images)
            level_maps = []
            for key, projector in zip(keys, projectors, strict=True):
                source_mapped, target_mapped = projector(out_a1[key], out_a2[key])
                source_map = torch.sum((out_a1[key] - source_mapped) ** 2 / 1, dim=1, keepdim=True)
                target_map = torch.sum((out_a2[key] - target_mapped) ** 2 / 1, dim=1, keepdim=True)
                level_map = F.interpolate(
                    (source_map + target_map) / 2.0, size=(height, width), mode="bilinear", align_corners=False
                )
                level_map = level_map.cpu().detach().numpy()
                np.squeeze(np.max(np.max(level_map, axis=2), axis=2), 1)  # their per-level scores
                level_maps.append(level_map)
            score_map = (level_maps[2] + level_maps[1] + level_maps[0]) / 3
            np.max(np.reshape(score_map, (score_map.shape[0], -1)), 1)  # their image scores
        return score_map

    def train_step(images: torch.Tensor, *_: torch.Tensor) -> object:
        for projector in projectors:
            projector.train()
        out_a1, out_a2 = agent_out(images)
        for level, (key, projector, optimizer) in enumerate(zip(keys, projectors, optimizers, strict=True)):
            source, target = out_a1[key], out_a2[key]
            source_mapped, target_mapped = projector(source.detach(), target.detach())
            if level > 0 or name == "authors-pefm":
                source, target = source.detach(), target.detach()
            loss = torch.mean((source - source_mapped) ** 2) + torch.mean((target - target_mapped) ** 2)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()
        return loss

    bench = _Bench()
    bench.infer, bench.train_step, bench.mappings = infer, train_step, projectors
    return bench


def pfm_map_difference(args: argparse.Namespace, name: str) -> tuple[float, float]:
    """Largest absolute and relative difference of ``name``'s anomaly map from its authors' counterpart's.

    The authors' side takes one training step on random images first (so that weights and BatchNorm statistics
    are not at their initial values); its projector weights are then copied into ours, and both map the same
    random batch of ``--throughput-batch`` images.
    """
    from tools.pfm_parity import authors_mapping_key

    torch.manual_seed(args.seed)
    size = args.image_size
    theirs, ours = _build_authors_pfm(f"authors-{name}", args), _build_pfm(name, args)
    assert theirs.train_step is not None
    assert theirs.mappings is not None
    assert ours.mappings is not None
    theirs.train_step(torch.rand(FIT_IMAGES, 3, size, size))
    for source, target in zip(theirs.mappings, ours.mappings, strict=True):
        target.load_state_dict({authors_mapping_key(key): value for key, value in source.state_dict().items()})
    images = torch.rand(args.throughput_batch, 3, size, size)
    reference = torch.from_numpy(theirs.infer(images))
    difference = (ours.infer(images) - reference).abs().max().item()
    return difference, difference / reference.abs().max().item()


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
    if name in PFM_SETTINGS:
        return _build_pfm(name, args)
    if name in ("authors-pfm", "authors-pefm"):
        return _build_authors_pfm(name, args)
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
    reference = {(r["model"], r["kind"]): r["median_s"] for r in results if r["model"] in REFERENCE.values()}
    rows = [
        (
            "| model | measurement | batch | median ms | min ms | images/s | GFLOP/image | share of matmul rate "
            "| peak RSS MiB | RSS increase MiB | speed-up vs reference | load avg before/after |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        per_image = r["median_s"] / r["batch"]
        achieved = r["flops_per_image"] / per_image
        key = (REFERENCE[r["model"]], r["kind"])
        ratio = f"{reference[key] / r['median_s']:.2f}x ({key[0]})" if key in reference else "-"
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
    parser.add_argument(
        "--pfm-authors-code", type=Path, help="checkout of smiler96/PFM-and-PEFM-for-Image-Anomaly-Detection-... "
    )
    parser.add_argument(
        "--models", nargs="+", choices=MODELS, help="default: all (authors' models only with their checkout)"
    )
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
    for option, marker in set(AUTHORS_CODE.values()):
        path = getattr(args, option)
        if path is not None and not (path / marker).is_file():
            msg = f"--{option.replace('_', '-')} {path} does not contain {marker}."
            raise SystemExit(msg)
    models = args.models or [m for m in MODELS if m not in AUTHORS_CODE or getattr(args, AUTHORS_CODE[m][0])]
    for model in models:
        if model in AUTHORS_CODE and getattr(args, AUTHORS_CODE[model][0]) is None:
            msg = f"--models {model} needs --{AUTHORS_CODE[model][0].replace('_', '-')}."
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
    passthrough += [
        f"--{option.replace('_', '-')}={getattr(args, option).resolve()}"
        for option in ("authors_code", "pfm_authors_code")
        if getattr(args, option) is not None
    ]
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
    pfm_models = [model for model in models if REFERENCE[model] != "authors"]
    backbones = [args.backbone] if len(pfm_models) < len(models) else []
    backbones += [" -> ".join(PFM_BACKBONES) + " (PFM/PEFM)"] if pfm_models else []
    header = (
        f"{', '.join(backbones)} (random weights), {args.image_size} px, float32, warm-up {args.warmup} + "
        f"{args.repeats} timed runs (median), torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.machine()} with {os.cpu_count()} CPUs; float32 matmul rate {rate / 1e9:.0f} GFLOP/s "
        f"(2048x2048, best of 3). FAST_PRESET = {FAST_PRESET}."
    )
    for name in PFM_SETTINGS:
        if {name, f"authors-{name}"} <= set(models):
            absolute, relative = pfm_map_difference(args, name)
            header += (
                f" {name} vs authors-{name}, same weights, batch {args.throughput_batch}: anomaly maps differ by "
                f"at most {absolute:.2e} ({relative:.2e} of the largest value)."
            )
    report = header + "\n\n" + _table(results, rate)
    print(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report + "\n")


if __name__ == "__main__":
    main()
