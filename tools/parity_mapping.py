"""Compare PCSNet with a reference implementation: weight mapping and a difference report.

The official code (``yuxin-jiang/PCSNet``) names its modules differently: ``adaptor`` holds the
radius ``r``, the prototypes ``C`` and a ``Descriptor`` (``layer_1..3`` CoordConvs and, for
rotation-sensitive categories, ``conv1``/``bn1``... reducer stacks); ``casnet.Model`` holds the
CAS (``corr_conv``, ``alpha_conv``, ``beta_conv``, ``res1``, ``res2``, ``cls`` and the unused
``inner_cls``). The key maps below translate those names to :class:`PcsnetModel`'s, so both can
run with the same randomly initialised weights; :func:`copy_mapped_weights` copies them and
refuses to leave a target tensor unset. :func:`compare` and :func:`format_report` measure and
tabulate the differences. ``tools/parity.py`` runs the official modules; the tests run the
same logic against a re-implementation of their CAS naming, without their code.

Development tooling, not installed with the package: import it from a checkout (editable install,
or ``PYTHONPATH`` set to the repository root).
"""

import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

# Reducer stacks of the official Descriptor: level 0 has no suffix, levels 1 and 2 end in _1 and _2;
# conv1/bn1/conv2/bn2/conv3 sit at indices 0/1/3/4/6 of our nn.Sequential. bn3* is built but never used.
_REDUCER_INDEX = {"conv1": 0, "bn1": 1, "conv2": 3, "bn2": 4, "conv3": 6}
_REDUCER_KEY = re.compile(r"^Descriptor\.(?P<layer>conv[123]|bn[123])(?:_(?P<level>[12]))?\.(?P<tensor>\w+)$")
_COORD_CONV_KEY = re.compile(r"^Descriptor\.layer_(?P<level>[123])\.(?P<inner>conv\.)?(?P<tensor>weight|bias)$")

_CAS_RULES = (
    (re.compile(r"^corr_conv\.(\d+)\.0\.weight$"), r"cas.merge.\1.0.weight"),
    (re.compile(r"^beta_conv\.(\d+)\.([02])\.weight$"), r"cas.refine.\1.\2.weight"),
    (re.compile(r"^alpha_conv\.(\d+)\.0\.weight$"), r"cas.link.\1.0.weight"),
    (re.compile(r"^res1\.0\.weight$"), r"cas.fuse.0.weight"),
    (re.compile(r"^res2\.([02])\.weight$"), r"cas.fuse_refine.\1.weight"),
    (re.compile(r"^cls\.([03])\.(weight|bias)$"), r"cas.classifier.\1.\2"),
)
_CAS_UNUSED = re.compile(r"^inner_cls\.")


def authors_adaptor_key(name: str, reduce_channels: bool) -> str | None:
    """Our ``PcsnetModel`` key for an official ``adaptor`` state-dict key; ``None`` for tensors we do not hold.

    Not held: the prototypes ``C`` (recomputed and compared instead), the unused parent weight of
    the official ``CoordConv2d`` (it subclasses ``Conv2d`` and convolves with an inner ``conv``),
    and the reducer stacks when ``reduce_channels`` is off (built but unused there) or ``bn3*`` (never used).
    """
    if name == "r":
        return "radius"
    if name == "C":
        return None
    if match := _COORD_CONV_KEY.match(name):
        if not match["inner"]:
            return None
        return f"descriptor.coord_convs.{int(match['level']) - 1}.conv.{match['tensor']}"
    if match := _REDUCER_KEY.match(name):
        if not reduce_channels or match["layer"] not in _REDUCER_INDEX:
            return None
        level = int(match["level"]) if match["level"] else 0
        return f"descriptor.reducers.{level}.{_REDUCER_INDEX[match['layer']]}.{match['tensor']}"
    msg = f"Unknown official adaptor key {name!r}: the parity mapping needs updating."
    raise KeyError(msg)


def authors_cas_key(name: str) -> str | None:
    """Our ``PcsnetModel`` key for an official ``casnet.Model`` key; ``None`` for the unused auxiliary heads."""
    if _CAS_UNUSED.match(name):
        return None
    for pattern, replacement in _CAS_RULES:
        if pattern.match(name):
            return pattern.sub(replacement, name)
    msg = f"Unknown official CAS key {name!r}: the parity mapping needs updating."
    raise KeyError(msg)


def copy_mapped_weights(
    source: nn.Module,
    target: nn.Module,
    key_map: Callable[[str], str | None],
    target_prefixes: Iterable[str],
) -> list[str]:
    """Copy ``source``'s tensors into ``target`` through ``key_map``; return the target keys set.

    Every target tensor whose key starts with one of ``target_prefixes`` must receive a value,
    with the same shape, so that a stale mapping fails loudly instead of comparing random weights.
    Entries that are not tensors (a module's ``_extra_state``, e.g. a random generator's state) are
    not weights and are left as they are.
    """
    target_state = target.state_dict()
    copied: dict[str, torch.Tensor] = {}
    for name, tensor in source.state_dict().items():
        key = key_map(name)
        if key is None:
            continue
        if key not in target_state:
            msg = f"Mapped key {key!r} (from {name!r}) does not exist in the target model."
            raise KeyError(msg)
        if target_state[key].shape != tensor.shape:
            msg = f"Shape mismatch for {name!r} -> {key!r}: {tuple(tensor.shape)} vs {tuple(target_state[key].shape)}."
            raise ValueError(msg)
        copied[key] = tensor
    prefixes = tuple(target_prefixes)
    missing = [
        k for k, v in target_state.items() if isinstance(v, torch.Tensor) and k.startswith(prefixes) and k not in copied
    ]
    if missing:
        msg = f"Target tensors left unset by the mapping: {missing}"
        raise ValueError(msg)
    target.load_state_dict(copied, strict=False)
    return sorted(copied)


@dataclass(frozen=True)
class Difference:
    """Largest absolute and relative difference between two tensors, judged against a tolerance."""

    name: str
    max_abs: float
    max_rel: float
    reference_scale: float
    rtol: float
    note: str = ""
    deviation: bool = False  # a documented deviation: reported, not expected to be within tolerance

    @property
    def passed(self) -> bool:
        """Whether the largest absolute difference is within ``rtol`` of the reference's largest magnitude."""
        return self.max_abs <= self.rtol * max(self.reference_scale, 1e-12)

    @property
    def acceptable(self) -> bool:
        """Within tolerance, or a documented deviation."""
        return self.passed or self.deviation


def compare(
    name: str,
    ours: torch.Tensor,
    reference: torch.Tensor,
    rtol: float = 1e-4,
    note: str = "",
    deviation: bool = False,
) -> Difference:
    """Difference between ``ours`` and ``reference`` (same shape), computed in float64.

    ``max_rel`` divides elementwise by ``|reference|`` (floored at 1e-6 of its largest
    magnitude, so values near zero do not dominate); ``passed`` uses the largest magnitude.
    """
    if ours.shape != reference.shape:
        msg = f"{name}: shapes differ, {tuple(ours.shape)} vs {tuple(reference.shape)}."
        raise ValueError(msg)
    a = ours.detach().double()
    b = reference.detach().double()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return Difference(name, float("nan"), float("nan"), float("nan"), rtol, note or "non-finite values", deviation)
    diff = (a - b).abs()
    scale = b.abs().max().item() if b.numel() else 0.0
    floor = max(scale * 1e-6, 1e-30)
    max_rel = (diff / b.abs().clamp_min(floor)).max().item() if b.numel() else 0.0
    return Difference(name, diff.max().item() if b.numel() else 0.0, max_rel, scale, rtol, note, deviation)


def format_report(differences: Iterable[Difference]) -> str:
    """A markdown table of the differences, one row each."""
    rows = [
        "| quantity | max abs diff | max rel diff | max abs reference | tolerance (rel to max) | within | note |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows.extend(
        f"| {d.name} | {d.max_abs:.3g} | {d.max_rel:.3g} | {d.reference_scale:.3g} | {d.rtol:g} "
        f"| {'yes' if d.passed else ('deviation' if d.deviation else 'NO')} | {d.note} |"
        for d in differences
    )
    return "\n".join(rows)


def import_authors_modules(path: Path) -> SimpleNamespace:
    """Import the official modules from a checkout at ``path``, with their ``AddCoords`` kept on the CPU.

    Returns ``adaptor``, ``casnet`` (their ``Model``), ``backbone`` (their ``wide_resnet50_2``) and
    ``gaussian_smooth``. Their files are not edited: ``AddCoords.__init__`` is wrapped at run time.
    """
    if not (path / "casnet.py").is_file() or not (path / "utils" / "adaptor.py").is_file():
        msg = f"{path} does not look like a PCSNet checkout (casnet.py, utils/adaptor.py expected)."
        raise FileNotFoundError(msg)
    sys.path.insert(0, str(path))
    import casnet
    import cnn.resnet
    import utils.adaptor
    import utils.coordconv
    from utils.metric import gaussian_smooth

    original_init = utils.coordconv.AddCoords.__init__

    def cpu_init(self: nn.Module, rank: int, with_r: bool = False, use_cuda: bool = True) -> None:
        del use_cuda
        original_init(self, rank, with_r, use_cuda=False)

    utils.coordconv.AddCoords.__init__ = cpu_init
    return SimpleNamespace(
        adaptor=utils.adaptor.adaptor,
        casnet=casnet.Model,
        backbone=cnn.resnet.wide_resnet50_2,
        gaussian_smooth=gaussian_smooth,
    )
