"""Run the authors' PFM/PEFM mapping networks and ours with the same weights and inputs; report the differences.

    python -m tools.pfm_parity --authors-code /tmp/pfm-authors [--output benchmarks/results/parity_pfm.md]

``--authors-code`` is a checkout (or ``git archive``) of
github.com/smiler96/PFM-and-PEFM-for-Image-Anomaly-Detection-and-Segmentation (not part of this repository).
Two presets are compared, each against the authors' network for it:

- MB-PFM (our ``Pfm``): ``DualProjectionNet`` of ``MB-PFM-ResNet.py``, latent 200/400/900, no position encoding,
  learning rates 3e-3/3e-4/3e-4; the same weights are also run through ``PEFM_AD.py``'s
  ``DualProjectionWithPENet(pe_required=False)``, which must give the same mappings;
- PEFM (our ``Pefm``): ``DualProjectionWithPENet(dual_type="small", pe_required=True)`` of ``PEFM_AD.py``,
  latent 200/400/800, the additive position encoding ``positionalencoding2d``, learning rate 3e-4.

Both sides get the same inputs: the L2-normalised features of our model's frozen ResNet34 / ResNet50 (random
weights, 256 px). The authors' weights are copied into ours through :func:`authors_mapping_key`. The quantities
compared: the training loss per level (their per-level ``mean((f_S - s_hat)^2) + mean((f_T - t_hat)^2)``,
``PEFM_AD.py:336-358``) over three training steps of their three Adams (``PEFM_AD.py:283-293``) against our
``configure_optimizers()`` (one Adam, a group per level), the parameters and BatchNorm statistics after those
steps, then in eval mode the mapped features of both directions, the per-level maps, the fused map and the
image score (their formula, ``PEFM_AD.py:459-513``), and the position encodings (bit for bit).

Their ``PEFM_AD.py`` and ``MB-PFM-ResNet.py`` cannot be imported as modules: their module-level imports need
tensorboard, loguru, cv2 and a ``visualize_score_maps`` that their ``utils.py`` does not define (ImportError, bug
B1 of the spec). :func:`load_authors_definitions` therefore executes only the definitions the comparison needs,
parsed from their files unmodified. Their ``.cuda()`` calls (bug B7) are made no-ops while their networks are
built (:func:`cuda_calls_stay_on_cpu`). Their files are read, never edited or copied into this repository.
"""

import argparse
import ast
import contextlib
import hashlib
import logging
import math
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from pcsnet_anomalib.models.pfm import FeatureMapping, Pefm, Pfm, level_error_map, position_encoding_2d
from tools.parity_mapping import Difference, compare, copy_mapped_weights, format_report

IMAGE_SIZE = 256  # PEFM_AD.py:262-280 builds its position encodings for 128/192/256/512 px only
WEIGHT_DECAY = 1e-5  # PEFM_AD.py:631, MB-PFM-ResNet.py's argparse
TRAINING_STEPS = 3

# What the comparison executes from each of their files (top-level definitions, by name).
AUTHORS_DEFINITIONS = {
    "PEFM_AD.py": ("positionalencoding2d", "Conv_BN_Relu", "DualProjectionWithPENet"),
    "MB-PFM-ResNet.py": ("Conv_BN_Relu", "DualProjectionNet"),
}

# Their mapping network: four nn.Sequential of Conv_BN_Relu blocks (each a ``.conv`` Sequential of conv, BN, ReLU,
# or a lone conv) and ``shared_coder``, one Conv_BN_Relu without BN or ReLU. Ours: flat nn.Sequential.
_AUTHORS_BLOCK_KEY = re.compile(
    r"^(?P<block>encoder1|decoder1|encoder2|decoder2)\.(?P<layer>\d+)\.conv\.(?P<index>[012])\.(?P<tensor>\w+)$"
)
_AUTHORS_SHARED_KEY = re.compile(r"^shared_coder\.conv\.0\.(?P<tensor>weight|bias)$")
_OUR_BLOCK = {
    "encoder1": "source_encoder",  # S -> T path
    "decoder1": "target_decoder",
    "encoder2": "target_encoder",  # T -> S path
    "decoder2": "source_decoder",
}


def authors_mapping_key(name: str) -> str:
    """Our :class:`FeatureMapping` key for a state-dict key of their ``DualProjectionNet``/``...WithPENet``.

    ``encoder1.<i>.conv.<j>.<tensor>`` -> ``source_encoder.<3i + j>.<tensor>`` (conv, BN, ReLU per block);
    likewise ``decoder1`` -> ``target_decoder``, ``encoder2`` -> ``target_encoder``, ``decoder2`` ->
    ``source_decoder``; ``shared_coder.conv.0.<tensor>`` -> ``shared.<tensor>``.

    Raises:
        KeyError: a key of another layout (``small_nonlocal``, ``less`` or a changed network).
    """
    if match := _AUTHORS_BLOCK_KEY.match(name):
        index = 3 * int(match["layer"]) + int(match["index"])
        return f"{_OUR_BLOCK[match['block']]}.{index}.{match['tensor']}"
    if match := _AUTHORS_SHARED_KEY.match(name):
        return f"shared.{match['tensor']}"
    msg = f"Unknown key {name!r} of the authors' mapping network: the parity mapping needs updating."
    raise KeyError(msg)


def copy_authors_weights(theirs: nn.Module, ours: FeatureMapping) -> list[str]:
    """Copy their level network's parameters and BatchNorm statistics into ``ours``; return our keys set.

    Also checks that our parameters are registered in their order (encoder1, shared_coder, decoder1, encoder2,
    decoder2), so that anything pairing parameters by position (optimizer state, ``parameters()`` lists) agrees.

    Raises:
        ValueError: the parameter orders differ, a shape differs or one of our tensors is left unset.
    """
    their_order = [authors_mapping_key(name) for name, _ in theirs.named_parameters()]
    our_order = [name for name, _ in ours.named_parameters()]
    if their_order != our_order:
        msg = f"Parameter orders differ: theirs (mapped) {their_order}, ours {our_order}."
        raise ValueError(msg)
    return copy_mapped_weights(theirs, ours, authors_mapping_key, ("",))


def load_authors_definitions(path: Path, names: Sequence[str], namespace: dict[str, object]) -> SimpleNamespace:
    """Execute only the top-level definitions ``names`` of the Python file ``path``, in ``namespace``.

    The file is parsed, not edited: the selected ``def``/``class`` statements run as they are written, with their
    own line numbers (tracebacks point into their file). ``namespace`` provides the names they use (``torch``,
    ``nn``, ...); the file's imports and other top-level statements do not run.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        LookupError: a name in ``names`` is not defined at the top level of ``path``.
    """
    if not path.is_file():
        msg = f"{path} not found: pass --authors-code a checkout of the PFM/PEFM repository."
        raise FileNotFoundError(msg)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    selected = [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name in names  # the last definition wins
    ]
    missing = sorted(set(names) - {node.name for node in selected})
    if missing:
        msg = f"{path} defines no top-level {missing}: the parity tool needs updating."
        raise LookupError(msg)
    scope = {"__name__": f"authors.{path.stem}", **namespace}
    exec(compile(ast.Module(body=selected, type_ignores=[]), str(path), "exec"), scope)
    return SimpleNamespace(**{name: scope[name] for name in names})


def _no_non_local_attention(*args: object, **kwargs: object) -> nn.Module:
    del args, kwargs
    msg = "NonLocalAttention (their models.py) belongs to dual_type='small_nonlocal', which is not compared."
    raise NotImplementedError(msg)


def import_authors_modules(path: Path) -> SimpleNamespace:
    """Their ``positionalencoding2d``, ``DualProjectionWithPENet`` (``PEFM_AD.py``) and ``DualProjectionNet``."""
    namespace = {
        "torch": torch,
        "nn": nn,
        "F": F,
        "math": math,
        "logger": logging.getLogger("tools.pfm_parity.authors"),  # loguru's logger.info, in PEFM_AD.py
        "NonLocalAttention": _no_non_local_attention,
    }
    pefm = load_authors_definitions(path / "PEFM_AD.py", AUTHORS_DEFINITIONS["PEFM_AD.py"], namespace)
    mb_pfm = load_authors_definitions(path / "MB-PFM-ResNet.py", AUTHORS_DEFINITIONS["MB-PFM-ResNet.py"], namespace)
    return SimpleNamespace(
        positionalencoding2d=pefm.positionalencoding2d,
        DualProjectionWithPENet=pefm.DualProjectionWithPENet,
        DualProjectionNet=mb_pfm.DualProjectionNet,
    )


@contextlib.contextmanager
def cuda_calls_stay_on_cpu() -> Iterator[None]:
    """Within the block, ``Tensor.cuda()`` returns the tensor itself (their position encodings call it, bug B7)."""
    original = torch.Tensor.cuda

    def stay(self: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        del args, kwargs
        return self

    torch.Tensor.cuda = stay  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[method-assign]


# Their formulas, transcribed line for line (the statistics ``var`` are 1 in every published run, §6 of the spec).
def authors_level_loss(fs: torch.Tensor, ft: torch.Tensor, s_hat: torch.Tensor, t_hat: torch.Tensor) -> torch.Tensor:
    """``PEFM_AD.py:336-339``: ``mean((fS - s_hat)^2) + mean((fT - t_hat)^2)``."""
    return torch.mean((fs.detach() - s_hat) ** 2) + torch.mean((ft.detach() - t_hat) ** 2)


def authors_level_map(fs: torch.Tensor, ft: torch.Tensor, s_hat: torch.Tensor, t_hat: torch.Tensor) -> torch.Tensor:
    """``PEFM_AD.py:472-475``: the two directions' squared errors summed over channels, then halved."""
    loss1_map = torch.sum((fs - s_hat) ** 2 / 1, dim=1, keepdim=True)
    loss2_map = torch.sum((ft - t_hat) ** 2 / 1, dim=1, keepdim=True)
    return (loss1_map + loss2_map) / 2.0


def authors_fusion(level_maps: Sequence[torch.Tensor], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``PEFM_AD.py:476, 503, 512-513``: bilinear upsampling, the mean of the three levels, the maximum as score."""
    upsampled = [F.interpolate(level, size=size, mode="bilinear", align_corners=False) for level in level_maps]
    score_map = (upsampled[2] + upsampled[1] + upsampled[0]) / 3
    return score_map, score_map.reshape(score_map.shape[0], -1).max(dim=1).values


@dataclass(frozen=True)
class Check:
    """An exact check: our value, theirs (or what the code gives), and the value the spec states."""

    name: str
    ours: object
    theirs: object
    expected: object

    @property
    def passed(self) -> bool:
        """Ours, theirs and the expected value are equal."""
        return self.ours == self.theirs == self.expected


def format_checks(checks: Sequence[Check]) -> str:
    """A markdown table of the exact checks."""
    rows = ["| check | ours | authors' | expected (spec) | equal |", "| --- | --- | --- | --- | --- |"]

    def show(value: object) -> str:
        return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)

    rows.extend(
        f"| {c.name} | {show(c.ours)} | {show(c.theirs)} | {show(c.expected)} | {'yes' if c.passed else 'NO'} |"
        for c in checks
    )
    return "\n".join(rows)


def compare_training_and_inference(
    label: str,
    ours: Pfm,
    theirs: Sequence[nn.Module],
    images: torch.Tensor,
    learning_rates: Sequence[float],
    weight_decay: float = WEIGHT_DECAY,
    steps: int = TRAINING_STEPS,
) -> list[Difference]:
    """Train both sides ``steps`` steps on ``images``, then compare the eval-mode outputs.

    ``theirs`` holds their level networks with the same weights as ``ours.model.mappings``. They are trained as in
    ``PEFM_AD.py:330-358``: one Adam per level (``learning_rates``, ``weight_decay``), each stepping on its own
    level's loss of the detached features; ours with ``ours.configure_optimizers()`` on ``ours.loss``'s total.
    Both see the features of ``ours.model``'s frozen backbones. The eval comparison uses each side's own trained
    weights and BatchNorm statistics.
    """
    model = ours.model
    model.eval()
    with torch.no_grad():
        source, target = model.extract_features(images)
    levels = range(len(theirs))
    their_optimizers = [
        torch.optim.Adam(net.parameters(), lr=rate, weight_decay=weight_decay)
        for net, rate in zip(theirs, learning_rates, strict=True)
    ]
    our_optimizer = ours.configure_optimizers()
    initial = [{name: p.detach().clone() for name, p in mapping.named_parameters()} for mapping in model.mappings]
    our_losses: list[list[torch.Tensor]] = [[] for _ in levels]
    their_losses: list[list[torch.Tensor]] = [[] for _ in levels]
    for _ in range(steps):
        model.train()
        losses = ours.loss(model(images))
        our_optimizer.zero_grad()
        losses["loss"].backward()
        our_optimizer.step()
        for level in levels:
            our_losses[level].append(losses[f"level_{level + 1}"].detach())
        for level, (net, optimizer) in enumerate(zip(theirs, their_optimizers, strict=True)):
            net.train()
            s_hat, t_hat = net(source[level].detach(), target[level].detach())
            loss = authors_level_loss(source[level], target[level], s_hat, t_hat)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            their_losses[level].append(loss.detach())

    differences = []
    for level in levels:
        ours_state = model.mappings[level].state_dict()
        their_state = {authors_mapping_key(k): v for k, v in theirs[level].state_dict().items()}
        parameter_names = [name for name, _ in model.mappings[level].named_parameters()]
        statistics = [name for name in ours_state if name.endswith(("running_mean", "running_var"))]
        differences += [
            compare(
                f"{label}: loss, level {level + 1}, {steps} training steps",
                torch.stack(our_losses[level]),
                torch.stack(their_losses[level]),
            ),
            compare(
                f"{label}: parameters after {steps} steps, level {level + 1}",
                torch.cat([ours_state[name].flatten() for name in parameter_names]),
                torch.cat([their_state[name].flatten() for name in parameter_names]),
            ),
            compare(
                f"{label}: parameter updates over {steps} steps, level {level + 1}",
                torch.cat([(ours_state[name] - initial[level][name]).flatten() for name in parameter_names]),
                torch.cat([(their_state[name] - initial[level][name]).flatten() for name in parameter_names]),
                note="after - before; judged against the largest update",
            ),
            compare(
                f"{label}: BatchNorm statistics after {steps} steps, level {level + 1}",
                torch.cat([ours_state[name].flatten() for name in statistics]),
                torch.cat([their_state[name].flatten() for name in statistics]),
            ),
        ]
    differences.append(
        compare(
            f"{label}: total loss, {steps} training steps",
            torch.stack([torch.stack(level) for level in our_losses]).sum(dim=0),
            torch.stack([torch.stack(level) for level in their_losses]).sum(dim=0),
        )
    )

    model.eval()
    their_maps = []
    with torch.no_grad():
        output = model(images)
        for level, net in enumerate(theirs):
            net.eval()
            s_hat, t_hat = net(source[level], target[level])
            our_s_hat, our_t_hat = model.mappings[level](source[level], target[level])
            their_maps.append(authors_level_map(source[level], target[level], s_hat, t_hat))
            our_map = level_error_map(target[level], our_t_hat, source[level], our_s_hat)
            differences += [
                compare(f"{label}: eval, level {level + 1}, mapped S->T (t_hat)", our_t_hat, t_hat),
                compare(f"{label}: eval, level {level + 1}, mapped T->S (s_hat)", our_s_hat, s_hat),
                compare(f"{label}: eval, level {level + 1}, map", our_map, their_maps[-1]),
            ]
        their_map, their_score = authors_fusion(their_maps, tuple(images.shape[-2:]))
    differences += [
        compare(f"{label}: eval, fused anomaly map ({images.shape[-1]} px)", output.anomaly_map, their_map),
        compare(f"{label}: eval, image score (max)", output.pred_score, their_score),
    ]
    return differences


@dataclass(frozen=True)
class Preset:
    """One of the authors' configurations and our model class whose defaults should reproduce it."""

    name: str
    model_class: type[Pfm]
    latent_dims: tuple[int, int, int]
    learning_rates: tuple[float, float, float]
    position_encoding: bool
    parameters_per_level: tuple[int, int, int]  # spec §3.1 / §15


PRESETS = (
    Preset("MB-PFM", Pfm, (200, 400, 900), (3e-3, 3e-4, 3e-4), False, (894_312, 3_559_888, 17_100_532)),
    Preset("PEFM", Pefm, (200, 400, 800), (3e-4, 3e-4, 3e-4), True, (894_312, 3_559_888, 14_204_832)),
)


def _count(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def run_preset(
    authors: SimpleNamespace, preset: Preset, images: torch.Tensor, seed: int
) -> tuple[list[Difference], list[Check]]:
    """Build their three level networks for ``preset`` and our model with its defaults; compare them."""
    ours = preset.model_class(pre_trained=False, evaluator=False, visualizer=False)
    model = ours.model
    checks = [
        Check(
            f"{preset.name}: {type(ours).__name__} learning rates",
            tuple(ours.learning_rates),
            preset.learning_rates,
            preset.learning_rates,
        ),
        Check(f"{preset.name}: {type(ours).__name__} weight decay", ours.weight_decay, WEIGHT_DECAY, WEIGHT_DECAY),
    ]
    model.eval()
    with torch.no_grad():
        source, target = model.extract_features(images)
    sizes = [tuple(features.shape[-2:]) for features in source]

    torch.manual_seed(seed)  # their networks initialise from torch's global generator
    theirs: list[nn.Module] = []
    with cuda_calls_stay_on_cpu():
        for s, t, latent, (height, width) in zip(source, target, preset.latent_dims, sizes, strict=True):
            if preset.position_encoding:
                net = authors.DualProjectionWithPENet(
                    height, width, s.shape[1], t.shape[1], latent, dual_type="small", pe_required=True
                )
            else:
                net = authors.DualProjectionNet(in_dim=s.shape[1], out_dim=t.shape[1], latent_dim=latent)
            theirs.append(net)
    differences: list[Difference] = []
    for level, (net, mapping) in enumerate(zip(theirs, model.mappings, strict=True)):
        copy_authors_weights(net, mapping)
        checks.append(
            Check(
                f"{preset.name}: parameters, level {level + 1} (S {source[level].shape[1]} ch, "
                f"T {target[level].shape[1]} ch, latent {preset.latent_dims[level]})",
                _count(mapping),
                _count(net),
                preset.parameters_per_level[level],
            )
        )
        checks.append(
            Check(
                f"{preset.name}: position encoding, level {level + 1}",
                mapping.position_encoding,
                getattr(net, "pe_required", False),
                preset.position_encoding,
            )
        )
        if preset.position_encoding:
            height, width = sizes[level]
            for direction, channels, their_pe in (("S", source, net.pe1), ("T", target, net.pe2)):
                depth = channels[level].shape[1]
                ours_pe = position_encoding_2d(depth, height, width)
                reference = authors.positionalencoding2d(depth, height, width)
                differences += [
                    compare(
                        f"{preset.name}: position encoding {direction}, level {level + 1} ({depth}x{height}x{width})",
                        ours_pe,
                        reference,
                        rtol=0.0,
                        note=f"torch.equal: {torch.equal(ours_pe, reference)}",
                    ),
                    compare(
                        f"{preset.name}: their network's pe{1 if direction == 'S' else 2}, level {level + 1}",
                        ours_pe,
                        their_pe,
                        rtol=0.0,
                    ),
                ]
    differences += compare_training_and_inference(preset.name, ours, theirs, images, preset.learning_rates)

    if not preset.position_encoding:  # PEFM_AD.py's network without PE must be MB-PFM's network
        model.eval()
        with torch.no_grad(), cuda_calls_stay_on_cpu():
            for level, net in enumerate(theirs):
                variant = authors.DualProjectionWithPENet(
                    *sizes[level],
                    source[level].shape[1],
                    target[level].shape[1],
                    preset.latent_dims[level],
                    dual_type="small",
                    pe_required=False,
                )
                variant.load_state_dict(net.state_dict())
                variant.eval()
                our_s_hat, our_t_hat = model.mappings[level](source[level], target[level])
                s_hat, t_hat = variant(source[level], target[level])
                differences.append(
                    compare(
                        f"{preset.name}: eval, level {level + 1}, both directions vs PEFM_AD.py pe_required=False",
                        torch.cat([our_s_hat.flatten(), our_t_hat.flatten()]),
                        torch.cat([s_hat.flatten(), t_hat.flatten()]),
                    )
                )
    return differences, checks


def run(
    authors_code: Path, batch: int, seed: int, presets: Sequence[Preset] = PRESETS
) -> tuple[list[Difference], list[Check]]:
    """Compare every preset on the same random images; return the differences and the exact checks."""
    authors = import_authors_modules(authors_code)
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    differences: list[Difference] = []
    checks: list[Check] = []
    for preset in presets:
        preset_differences, preset_checks = run_preset(authors, preset, images, seed)
        differences += preset_differences
        checks += preset_checks
    return differences, checks


def our_code_version() -> str:
    """This checkout's commit, and whether the PFM model files differ from it (the report says what it measured)."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        return result.stdout.strip() if result.returncode == 0 else "unknown"

    changed = git("status", "--porcelain", "--", "pcsnet_anomalib/models/pfm")
    state = "with uncommitted changes in pcsnet_anomalib/models/pfm" if changed else "models/pfm as committed"
    return f"{git('rev-parse', '--short', 'HEAD')} ({state})"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def report(
    differences: Sequence[Difference],
    checks: Sequence[Check],
    command: str,
    authors_code: Path,
    batch: int,
    seed: int,
    seconds: float,
    describe: Callable[[Path], str] = _sha256,
    version: str = "",
) -> str:
    """The markdown report: settings, the command, the difference table and the exact checks."""
    agree = all(d.passed for d in differences) and all(c.passed for c in checks)
    verdict = "everything agrees within tolerance" if agree else "SOME QUANTITIES DISAGREE"
    files = ", ".join(f"`{name}` sha256 {describe(authors_code / name)}…" for name in AUTHORS_DEFINITIONS)
    return "\n".join(
        [
            (
                f"Parity: ours (Pfm, Pefm) vs the authors' PFM/PEFM mapping networks, ResNet34 -> ResNet50 random "
                f"weights, batch {batch}, {IMAGE_SIZE} px, float32, seed {seed}, {TRAINING_STEPS} training steps"
            ),
            f"torch {torch.__version__}, {platform.machine()}, {seconds:.0f} s; {verdict}",
            "",
            f"Command: `{command}`" + (f", at commit {version}" if version else ""),
            f"Authors' files read (definitions only, unmodified): {files}",
            "",
            (
                "Tolerance: max abs diff <= rtol x the reference's largest magnitude (rtol 1e-4; 0 for the position "
                "encodings). Max rel diff is elementwise, floored at 1e-6 of that magnitude."
            ),
            "",
            format_report(differences),
            "",
            format_checks(checks),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run the comparison, print the report (and write it with ``--output``); 1 on a failure."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authors-code", type=Path, required=True, help="checkout of smiler96/PFM-and-PEFM-...")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="also write the markdown report here")
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(arguments)

    start = time.perf_counter()
    differences, checks = run(args.authors_code.resolve(), args.batch, args.seed)
    command = shlex.join([".venv/bin/python", "-m", "tools.pfm_parity", *arguments])
    text = report(
        differences,
        checks,
        command,
        args.authors_code.resolve(),
        args.batch,
        args.seed,
        time.perf_counter() - start,
        version=our_code_version(),
    )
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    return 0 if all(d.passed for d in differences) and all(c.passed for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
