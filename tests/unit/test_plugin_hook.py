"""The start-up hook (startup/_pcsnet_anomalib_hook.py) and the registration (pcsnet_anomalib._plugin).

Hook mechanics are tested in-process on throwaway packages written to tmp_path; the real anomalib
is imported by two subprocesses only (a fresh interpreter is the only place ``anomalib.models`` is
imported for the first time).
"""

import importlib
import importlib.machinery
import importlib.util
import logging
import os
import subprocess
import sys
import textwrap
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HOOK_FILE = REPO / "startup" / "_pcsnet_anomalib_hook.py"
PTH_FILE = REPO / "startup" / "pcsnet_anomalib.pth"
SUBPROCESS_TIMEOUT = 180


def _load_hook_module() -> types.ModuleType:
    """The repository's hook file, loaded under its own name (an installed copy may already be loaded)."""
    spec = importlib.util.spec_from_file_location("_pcsnet_anomalib_hook_under_test", HOOK_FILE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hook_module = _load_hook_module()


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A uniquely named package ``<pkg>`` with ``models``, ``engine`` (imports models), ``other`` and ``broken``."""
    name = f"fakeanomalib_{uuid.uuid4().hex[:8]}"
    root = tmp_path / "src"
    _write(root / name / "__init__.py", "")
    _write(root / name / "models" / "__init__.py", "from . import layers\nCOMPLETE = True\n")
    _write(root / name / "models" / "layers.py", "VALUE = 1\n")
    _write(
        root / name / "engine" / "__init__.py",
        f"from {name}.models import COMPLETE\nfrom .engine import Engine\nENGINE_COMPLETE = True\n",
    )
    _write(root / name / "engine" / "engine.py", "class Engine:\n    pass\n")
    _write(root / name / "other.py", "X = 1\n")
    _write(root / name / "broken.py", f"import {name}.models\nraise RuntimeError('broken on purpose')\n")
    _write(root / f"{name}_neighbour.py", "Y = 1\n")
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    yield name
    for module in [m for m in sys.modules if m == name or m.startswith((f"{name}.", f"{name}_"))]:
        del sys.modules[module]


@pytest.fixture
def make_hook(monkeypatch: pytest.MonkeyPatch) -> Callable[..., object]:
    """Build a PluginHook for a fake package and put it first on a private copy of sys.meta_path."""
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    monkeypatch.delenv(hook_module.DISABLE_ENV, raising=False)

    def make(package: str, callback: Callable[[], object]) -> object:
        hook = hook_module.PluginHook(package=package, trigger=f"{package}.models", callback=callback)
        sys.meta_path.insert(0, hook)
        return hook

    return make


def test_pth_file_is_one_import_line() -> None:
    lines = [line for line in PTH_FILE.read_text().splitlines() if line.strip()]
    assert lines == ["import _pcsnet_anomalib_hook; _pcsnet_anomalib_hook.install()"]


def test_unrelated_imports_do_not_fire(fake_package: str, make_hook: Callable[..., object]) -> None:
    calls: list[str] = []
    hook = make_hook(fake_package, lambda: calls.append("fired"))
    importlib.import_module(f"{fake_package}_neighbour")  # shares the prefix but is not in the package
    importlib.import_module(fake_package)
    importlib.import_module(f"{fake_package}.other")
    importlib.import_module("json")
    assert calls == []
    assert hook.fired == 0


def test_fires_once_after_the_outermost_import(fake_package: str, make_hook: Callable[..., object]) -> None:
    seen: list[tuple[bool, bool]] = []

    def callback() -> None:
        engine = sys.modules[f"{fake_package}.engine"]
        seen.append((getattr(engine, "ENGINE_COMPLETE", False), hasattr(engine, "Engine")))

    hook = make_hook(fake_package, callback)
    importlib.import_module(f"{fake_package}.engine")  # imports .models while .engine is half-initialised
    assert seen == [(True, True)], "must fire once, when engine (the outermost import) is complete"
    importlib.import_module(f"{fake_package}.models")
    importlib.import_module(f"{fake_package}.other")
    assert hook.fired == 1


def test_trigger_as_outermost_import_is_bound_on_its_parent(
    fake_package: str, make_hook: Callable[..., object]
) -> None:
    seen: list[bool] = []

    def callback() -> None:
        package = sys.modules[fake_package]
        seen.append(getattr(getattr(package, "models", None), "COMPLETE", False))

    make_hook(fake_package, callback)
    importlib.import_module(f"{fake_package}.models")
    assert seen == [True], "the callback must be able to use `package.models` already"


def test_real_loader_is_restored(fake_package: str, make_hook: Callable[..., object]) -> None:
    make_hook(fake_package, lambda: None)
    module = importlib.import_module(f"{fake_package}.models")
    assert type(module.__loader__).__name__ == "SourceFileLoader"
    assert module.__spec__.loader is module.__loader__


def test_reload_fires_again(fake_package: str, make_hook: Callable[..., object]) -> None:
    hook = make_hook(fake_package, lambda: None)
    module = importlib.import_module(f"{fake_package}.models")
    importlib.reload(module)
    assert hook.fired == 2


def test_failed_import_does_not_fire_nor_leave_the_hook_stuck(
    fake_package: str, make_hook: Callable[..., object]
) -> None:
    hook = make_hook(fake_package, lambda: None)
    with pytest.raises(RuntimeError, match="broken on purpose"):
        importlib.import_module(f"{fake_package}.broken")  # models completes inside a failing import
    assert hook.fired == 0
    importlib.import_module(f"{fake_package}.other")  # the next complete import runs the pending callback
    assert hook.fired == 1


def test_failing_callback_logs_a_warning_and_the_import_succeeds(
    fake_package: str, make_hook: Callable[..., object], caplog: pytest.LogCaptureFixture
) -> None:
    def callback() -> None:
        msg = "plugin exploded"
        raise ValueError(msg)

    make_hook(fake_package, callback)
    with caplog.at_level(logging.WARNING, logger="pcsnet_anomalib"):
        module = importlib.import_module(f"{fake_package}.models")
    assert module.COMPLETE
    assert "plugin exploded" in caplog.text


def test_environment_switch_disables_the_hook(
    fake_package: str, make_hook: Callable[..., object], monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = make_hook(fake_package, lambda: pytest.fail("must not fire"))
    monkeypatch.setenv(hook_module.DISABLE_ENV, "1")
    importlib.import_module(f"{fake_package}.models")
    assert hook.fired == 0
    assert hook_module.install() is None


def test_install_is_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if not getattr(f, hook_module.MARKER, False)])
    monkeypatch.delenv(hook_module.DISABLE_ENV, raising=False)
    first = hook_module.install()
    assert first is not None
    assert hook_module.install() is first
    assert sum(getattr(f, hook_module.MARKER, False) for f in sys.meta_path) == 1
    hook_module.uninstall()
    assert not any(getattr(f, hook_module.MARKER, False) for f in sys.meta_path)


def _fake_distribution(root: Path, entry_points: str, name: str = "fake_plugin_dist") -> None:
    dist_info = root / f"{name}-0.0.1.dist-info"
    _write(dist_info / "METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n")
    _write(dist_info / "entry_points.txt", entry_points)


def test_load_entry_points_calls_good_ones_and_warns_about_broken_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    group = f"anomalib.plugins.test_{uuid.uuid4().hex[:8]}"
    module = f"fake_plugin_{uuid.uuid4().hex[:8]}"
    _write(tmp_path / f"{module}.py", "CALLS = []\ndef register():\n    CALLS.append(1)\n")
    _fake_distribution(
        tmp_path,
        f"[{group}]\ngood = {module}:register\nbroken = no_such_module_{module}:register\n",
    )
    _fake_distribution(tmp_path, f"[{group}]\ngood = {module}:register\n", name="fake_plugin_dist_copy")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        with caplog.at_level(logging.WARNING, logger="pcsnet_anomalib"):
            loaded = hook_module.load_entry_points(group)
        assert loaded == ["good"]
        assert sys.modules[module].CALLS == [1], "an entry point found twice is called once"
        assert "'broken'" in caplog.text
        assert "ModuleNotFoundError" in caplog.text
    finally:
        sys.modules.pop(module, None)


def _run(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        env={**os.environ, **(env or {})},
        cwd=REPO,
        check=False,
    )


def test_hook_module_imports_neither_torch_nor_anomalib() -> None:
    result = _run(
        f"""
        import sys
        import importlib.util  # to load the repository's file even where an installed copy is active
        spec = importlib.util.spec_from_file_location("hook_under_test", {str(HOOK_FILE)!r})
        hook_module = importlib.util.module_from_spec(spec)
        before = set(sys.modules)
        spec.loader.exec_module(hook_module)
        sys.meta_path = [f for f in sys.meta_path if not getattr(f, hook_module.MARKER, False)]
        hook = hook_module.install()
        added = set(sys.modules) - before
        assert not added, f"the start-up hook imported {{sorted(added)}}"
        import json  # an unrelated import goes through the hook
        heavy = {{"torch", "anomalib", "typing", "importlib.metadata"}}
        heavy = [m for m in set(sys.modules) - before if m in heavy or m.split(".")[0] in heavy]
        assert not heavy, heavy
        print("OK", hook.fired)
        """,
        env={hook_module.DISABLE_ENV: "0"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK 0" in result.stdout


# The two subprocesses below import the real anomalib (~10 s each). They put the repository and a
# fake dist-info declaring the package's entry point on sys.path, as an installation would.
def _installed_like(tmp_path: Path, probe: bool) -> dict[str, str]:
    entry_points = "[anomalib.plugins]\npcsnet = pcsnet_anomalib._plugin:register\n"
    if probe:
        entry_points += "probe = plugin_probe:register\nbroken = no_such_plugin_module_xyz:register\n"
        _write(
            tmp_path / "plugin_probe.py",
            """
            CALLS = []

            def register():
                # Fired after the outermost anomalib import: everything anomalib imported is complete.
                import anomalib.callbacks
                import anomalib.engine
                CALLS.append((hasattr(anomalib.callbacks, "get_callbacks"), hasattr(anomalib.engine, "Engine")))
            """,
        )
    _fake_distribution(tmp_path, entry_points, name="pcsnet_anomalib_under_test")
    path = os.pathsep.join([str(tmp_path), str(HOOK_FILE.parent), str(REPO)])
    return {"PYTHONPATH": path, "PYTHONWARNINGS": "ignore", hook_module.DISABLE_ENV: "0"}


def test_anomalib_finds_the_plugin_without_any_user_import(tmp_path: Path) -> None:
    result = _run(
        """
        import sys
        import _pcsnet_anomalib_hook
        _pcsnet_anomalib_hook.install()
        from anomalib.engine import Engine  # anomalib.models completes while anomalib.callbacks is half-imported
        import plugin_probe
        assert plugin_probe.CALLS == [(True, True)], plugin_probe.CALLS
        import anomalib.data
        import anomalib.models
        from anomalib.models import get_model, list_models
        assert "pcsnet" in list_models(), list_models()
        assert type(get_model("pcsnet", backbone="resnet18", pre_trained=False)).__name__ == "Pcsnet"
        config = {"class_path": "Pcsnet", "init_args": {"backbone": "resnet18", "pre_trained": False}}
        assert type(get_model(config)).__name__ == "Pcsnet"
        assert "Pcsnet" in anomalib.models.__all__
        assert anomalib.data.PcsnetDemo.__module__.startswith("pcsnet_anomalib.data")
        import anomalib.pipelines  # more anomalib imports: no second call
        assert len(plugin_probe.CALLS) == 1
        print("OK")
        """,
        env=_installed_like(tmp_path, probe=True),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
    assert "'broken'" in result.stderr, "a broken entry point is reported as a warning"
    assert "'pcsnet'" not in result.stderr, result.stderr


def test_importing_the_package_first_registers_without_circular_import(tmp_path: Path) -> None:
    result = _run(
        """
        import _pcsnet_anomalib_hook
        _pcsnet_anomalib_hook.install()
        from pcsnet_anomalib import Pcsnet  # imports anomalib.models: the hook fires mid-import
        import anomalib.data
        import anomalib.models
        assert anomalib.models.Pcsnet is Pcsnet, "pcsnet_anomalib/__init__.py must end with the register call"
        assert anomalib.data.PcsnetDemo is not None
        print("OK")
        """,
        env=_installed_like(tmp_path, probe=False),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
    assert "anomalib plugin" not in result.stderr, result.stderr


# Registration logic, in-process.
def test_register_defers_while_a_submodule_is_being_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    from pcsnet_anomalib import _plugin

    half_imported = types.ModuleType("pcsnet_anomalib.half_imported")
    half_imported.__spec__ = importlib.machinery.ModuleSpec("pcsnet_anomalib.half_imported", None)
    half_imported.__spec__._initializing = True
    monkeypatch.setitem(sys.modules, "pcsnet_anomalib.half_imported", half_imported)
    assert _plugin._initialising_submodule() == "pcsnet_anomalib.half_imported"
    assert _plugin.register() is False


def test_export_sets_the_name_once_and_never_shadows_anomalib(caplog: pytest.LogCaptureFixture) -> None:
    from pcsnet_anomalib import _plugin

    namespace = types.ModuleType("anomalib.fake_namespace")
    namespace.__all__ = ["Existing"]
    mine = type("Mine", (), {"__module__": "pcsnet_anomalib.models"})
    theirs = type("Theirs", (), {"__module__": "anomalib.models.image"})
    assert _plugin._export(namespace, "Mine", mine)
    assert _plugin._export(namespace, "Mine", mine)
    assert namespace.Mine is mine
    assert namespace.__all__ == ["Existing", "Mine"]
    namespace.Existing = theirs
    with caplog.at_level(logging.WARNING, logger="pcsnet_anomalib"):
        assert not _plugin._export(namespace, "Existing", mine)
    assert namespace.Existing is theirs
    assert "already exists" in caplog.text


def test_register_puts_the_classes_where_anomalib_looks() -> None:
    import anomalib.data
    import anomalib.models

    import pcsnet_anomalib
    from pcsnet_anomalib import _plugin
    from pcsnet_anomalib.data import PcsnetDemo

    assert _plugin.register() is True
    assert _plugin.register() is True
    assert anomalib.models.Pcsnet is pcsnet_anomalib.Pcsnet
    assert anomalib.models.__all__.count("Pcsnet") == 1
    assert anomalib.data.PcsnetDemo is PcsnetDemo
    assert "pcsnet" in anomalib.models.list_models()
    assert pcsnet_anomalib.Pcsnet in anomalib.models.components.AnomalibModule.__subclasses__()


def test_register_warns_about_a_missing_class(caplog: pytest.LogCaptureFixture) -> None:
    from pcsnet_anomalib import _plugin

    with caplog.at_level(logging.WARNING, logger="pcsnet_anomalib"):
        ok = _plugin.register_classes("pcsnet_anomalib", {"Nope": "no_such_module_xyz:Nope"}, {})
    assert ok is False
    assert "Could not register Nope" in caplog.text
