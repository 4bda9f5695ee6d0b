"""End to end: pip-install the built wheel into a fresh environment and drive Pcsnet through anomalib only.

The fresh venv reuses the current environment's installed packages (anomalib, torch, ...) through a
folder of symbolic links that leaves out pcsnet-anomalib and every ``.pth`` file, so before the wheel
is installed ``pcsnet_anomalib`` is not importable there. No code in the subprocesses imports
``pcsnet_anomalib``: only the start-up hook and the ``anomalib.plugins`` entry point bring it in.
"""

import os
import re
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 300
CATEGORY = "widget"  # the category of the `mvtec_root` fixture (tests/conftest.py)

# A small, randomly initialised Pcsnet at 64 x 64 that trains in seconds on a CPU. Train, export and
# predict must build the same architecture, so they share these arguments.
MODEL_ARGS = [
    "--model",
    "Pcsnet",
    "--model.backbone",
    "resnet18",
    "--model.pre_trained",
    "false",
    "--model.grid_stride",
    "4",
    "--model.cas_channels",
    "32",
    "--model.prior_channels",
    "16",
    "--model.pre_processor",
    "anomalib.pre_processing.PreProcessor",
    "--model.pre_processor.transform",
    "torchvision.transforms.v2.Resize",
    "--model.pre_processor.transform.size",
    "[64, 64]",
]


@dataclass
class Env:
    """A fresh virtual environment."""

    python: Path
    anomalib: Path
    site_packages: Path


def _run(args: list[str | Path], cwd: Path, timeout: int = TIMEOUT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PCSNET_ANOMALIB_DISABLE_PLUGINS"}}
    return subprocess.run(
        [str(arg) for arg in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _check(result: subprocess.CompletedProcess[str]) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


def _dependency_links(target: Path) -> Path:
    """Links to everything installed in this environment except pcsnet-anomalib and start-up files."""
    target.mkdir()
    skip_prefixes = ("pcsnet_anomalib", "_pcsnet_anomalib", "__editable__", "__pycache__")
    for directory in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        for entry in Path(directory).iterdir():
            if entry.name.startswith(skip_prefixes) or entry.suffix in {".pth", ".egg-link"}:
                continue
            if not (target / entry.name).exists():
                (target / entry.name).symlink_to(entry)
    return target


def _fresh_venv(root: Path, dependencies: Path) -> Env:
    _check(_run([sys.executable, "-m", "venv", "--without-pip", root], cwd=root.parent))
    bin_dir = root / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    site_packages = Path(
        _check(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root)).strip()
    )
    (site_packages / "_test_dependencies.pth").write_text(f"{dependencies}\n")
    # The console script pip would have written for anomalib's `anomalib` entry point.
    script = bin_dir / "anomalib"
    shim = "import sys\nfrom anomalib.cli.cli import main\n\nif __name__ == '__main__':\n    sys.exit(main())\n"
    script.write_text(f"#!{python}\n{shim}")
    script.chmod(0o755)
    return Env(python=python, anomalib=script, site_packages=site_packages)


def _pip_install(env: Env, *args: str | Path) -> None:
    command = [sys.executable, "-m", "pip", "--python", env.python, "install", "--no-deps", "--no-index"]
    _check(_run([*command, "--no-build-isolation", *args], cwd=env.site_packages))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from this repository (hatchling, no network)."""
    pytest.importorskip("hatchling", reason="building the wheel offline needs hatchling in this environment")
    out = tmp_path_factory.mktemp("dist")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", out, REPO]
    _check(_run(command, cwd=out))
    (built,) = out.glob("pcsnet_anomalib-*.whl")
    return built


@pytest.fixture(scope="module")
def dependencies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _dependency_links(tmp_path_factory.mktemp("deps") / "site")


@pytest.fixture(scope="module")
def installed(wheel: Path, dependencies: Path, tmp_path_factory: pytest.TempPathFactory) -> Env:
    """A fresh venv where anomalib works, then `pip install <wheel>`."""
    env = _fresh_venv(tmp_path_factory.mktemp("venv") / "wheel-venv", dependencies)
    probe = (
        "import importlib.util as u; print(u.find_spec('anomalib') is not None, u.find_spec('pcsnet_anomalib') is None)"
    )
    assert _check(_run([env.python, "-c", probe], cwd=env.site_packages)).split() == ["True", "True"], (
        "before installing, anomalib must be importable and pcsnet_anomalib not"
    )
    _pip_install(env, wheel)
    return env


def test_wheel_ships_the_hook_and_the_entry_point(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert {"_pcsnet_anomalib_hook.py", "pcsnet_anomalib.pth", "pcsnet_anomalib/_plugin.py"} <= names
        assert archive.read("pcsnet_anomalib.pth") == (REPO / "startup" / "pcsnet_anomalib.pth").read_bytes()
        (entry_points,) = (name for name in names if name.endswith(".dist-info/entry_points.txt"))
        text = archive.read(entry_points).decode()
        (metadata,) = (name for name in names if name.endswith(".dist-info/METADATA"))
        fields = archive.read(metadata).decode().split("\n\n", 1)[0].splitlines()
    assert "[anomalib.plugins]" in text
    assert "pcsnet = pcsnet_anomalib._plugin:register" in text
    assert not any("parity" in name for name in names), "the parity tooling lives in tools/, not in the package"
    version = re.search(r'^__version__ = "(.+)"$', (REPO / "pcsnet_anomalib" / "__init__.py").read_text(), re.M)
    assert version is not None
    assert f"Version: {version[1]}" in fields  # one source of truth: hatch reads __version__
    assert "Provides-Extra: benchmark" in fields
    core = [f for f in fields if f.startswith("Requires-Dist:") and "extra ==" not in f]
    assert not any(name in f for f in core for name in ("pandas", "matplotlib")), core


def test_hook_is_active_at_start_up_and_light(installed: Env, tmp_path: Path) -> None:
    watched = "('_pcsnet_anomalib_hook', 'pcsnet_anomalib', 'torch', 'anomalib')"
    code = f"import sys; print(sorted(m for m in {watched} if m in sys.modules))"
    assert _check(_run([installed.python, "-c", code], cwd=tmp_path)).strip() == "['_pcsnet_anomalib_hook']"


def test_python_api_finds_pcsnet_without_importing_it(installed: Env, tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import anomalib.data
        from anomalib.models import get_model, list_models
        tiny = {"backbone": "resnet18", "pre_trained": False}
        assert type(get_model("pcsnet", **tiny)).__name__ == "Pcsnet"
        assert type(get_model({"class_path": "Pcsnet", "init_args": tiny})).__name__ == "Pcsnet"
        assert "pcsnet" in list_models() and "Pcsnet" in list_models(case="pascal")
        assert anomalib.data.PcsnetDemo.__module__.startswith("pcsnet_anomalib.")
        print("OK")
        """
    )
    output = _check(_run([installed.python, "-c", code], cwd=tmp_path))
    assert "OK" in output
    assert "anomalib plugin" not in output, output


def test_cli_resolves_model_and_demo_datamodule(installed: Env, tmp_path: Path) -> None:
    output = _check(_run([installed.anomalib, "fit", *MODEL_ARGS, "--data", "PcsnetDemo", "--print_config"], tmp_path))
    assert "class_path: pcsnet_anomalib." in output
    assert re.search(r"class_path: pcsnet_anomalib\.[\w.]*Pcsnet\b", output), output[-3000:]
    assert re.search(r"class_path: pcsnet_anomalib\.[\w.]*PcsnetDemo\b", output), output[-3000:]


def test_cli_train_export_predict(installed: Env, mvtec_root: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    data_args = ["--data", "KShotMVTecAD", "--data.root", mvtec_root, "--data.category", CATEGORY]
    data_args += ["--data.num_workers", "0", "--data.k_shot", "4", "--data.train_batch_size", "2"]
    train = [installed.anomalib, "train", *MODEL_ARGS, *data_args]
    train += ["--data.eval_batch_size", "4", "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu"]
    output = _check(_run([*train, "--default_root_dir", results], tmp_path))
    assert "image_AUROC" in output
    assert "pixel_AUROC" in output
    (checkpoint,) = results.glob(f"Pcsnet/KShotMVTecAD/{CATEGORY}/v*/weights/lightning/model.ckpt")

    export_root = tmp_path / "exported"
    export = [installed.anomalib, "export", *MODEL_ARGS, "--export_type", "torch", "--ckpt_path", checkpoint]
    _check(_run([*export, "--export_root", export_root], tmp_path))
    assert (export_root / "weights" / "torch" / "model.pt").is_file()

    predictions = tmp_path / "predictions"
    predict = [installed.anomalib, "predict", *MODEL_ARGS, "--ckpt_path", checkpoint]
    predict += ["--data", mvtec_root / CATEGORY / "test" / "stain", "--default_root_dir", predictions]
    _check(_run(predict, tmp_path))
    assert list(predictions.rglob("*.png")), "predict wrote no images"


def test_editable_install_activates_the_hook(dependencies: Path, tmp_path: Path) -> None:
    env = _fresh_venv(tmp_path / "editable-venv", dependencies)
    _pip_install(env, "-e", REPO)
    code = textwrap.dedent(
        """
        import sys, importlib.util, importlib.metadata as md
        assert "_pcsnet_anomalib_hook" in sys.modules and "anomalib" not in sys.modules
        print(importlib.util.find_spec("pcsnet_anomalib").origin)
        print([ep.value for ep in md.entry_points(group="anomalib.plugins") if ep.name == "pcsnet"])
        """
    )
    lines = _check(_run([env.python, "-c", code], cwd=tmp_path)).strip().splitlines()
    assert Path(lines[0]) == REPO / "pcsnet_anomalib" / "__init__.py"
    assert lines[1] == "['pcsnet_anomalib._plugin:register']"
