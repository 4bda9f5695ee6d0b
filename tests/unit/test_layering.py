"""Layering of the package: data <- models <- callbacks <- benchmark ("is imported by"), no upward import, no cycle."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "pcsnet_anomalib"

# Lower layers never import higher ones. backbones and data are independent foundations of the models.
LAYERS = {"data": 0, "backbones": 0, "models": 1, "callbacks": 2, "benchmark": 3}
SUBPACKAGES = sorted(LAYERS)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the ``pcsnet_anomalib`` modules that ``path`` imports (relative imports resolved)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(".".join([*base, *([node.module] if node.module else [])]))
            elif node.module:
                found.add(node.module)
    return {name for name in found if name.startswith("pcsnet_anomalib.")}


def _layer(module: str) -> int | None:
    subpackage = module.split(".")[1] if module.count(".") >= 1 else None
    return LAYERS.get(subpackage) if subpackage is not None else None


def test_no_module_imports_a_higher_layer() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = _layer(_module_name(path))
        if own is None:
            continue  # the package root (__init__, _plugin, _upstream) may import any layer
        for imported in sorted(_imports(path)):
            layer = _layer(imported)
            if layer is not None and layer > own:
                upward.append(f"{_module_name(path)} imports {imported}")
    assert not upward, upward


def test_the_checker_sees_relative_and_absolute_imports(tmp_path: Path) -> None:
    """The rule above cannot pass vacuously: it resolves the import forms the package uses."""
    models = PACKAGE / "models" / "pcsnet" / "lightning_model.py"
    imported = _imports(models)
    assert "pcsnet_anomalib.data.validation" in imported  # absolute
    assert "pcsnet_anomalib.models.pcsnet.loss" in imported  # relative (from .loss import ...)


@pytest.mark.slow
@pytest.mark.parametrize("subpackage", SUBPACKAGES)
def test_each_subpackage_imports_first_and_alone(subpackage: str) -> None:
    """A fresh interpreter can import any layer first (no order-dependent circular import)."""
    code = f"import pcsnet_anomalib.{subpackage}"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_importing_the_package_leaves_the_benchmark_extra_alone() -> None:
    """``import pcsnet_anomalib`` loads neither the benchmark layer nor the private-API shims it needs."""
    prefixes = ("pcsnet_anomalib.benchmark", "pcsnet_anomalib._upstream")
    code = f"import sys, pcsnet_anomalib; print(sorted(m for m in sys.modules if m.startswith({prefixes!r})))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
