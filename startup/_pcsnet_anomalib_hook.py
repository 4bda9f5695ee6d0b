"""Start-up hook of pcsnet-anomalib, run by ``pcsnet_anomalib.pth`` when the interpreter starts.

anomalib reads no entry points, so this module puts a finder on ``sys.meta_path`` that watches the
``anomalib`` modules being imported. Once ``anomalib.models`` has been imported and the outermost
``anomalib`` import around it has finished (so no ``anomalib`` module is half-initialised), it loads
the entry points of the group ``anomalib.plugins`` and calls each of them, once per import of
``anomalib.models``. A failing entry point only logs a warning.

At start-up this costs one small module that imports nothing the interpreter has not already loaded:
no torch, no anomalib, no ``importlib.metadata``. Set ``PCSNET_ANOMALIB_DISABLE_PLUGINS=1`` to turn it off.
Editable installs copy this file into site-packages: keep it small and stable, and put plugin logic
in the plugins themselves (``pcsnet_anomalib._plugin``).
"""

import os
import sys
from _thread import get_ident

TYPE_CHECKING = False  # typing itself costs ~8 ms at start-up
if TYPE_CHECKING:
    from collections.abc import Callable

GROUP = "anomalib.plugins"
DISABLE_ENV = "PCSNET_ANOMALIB_DISABLE_PLUGINS"
LOGGER_NAME = "pcsnet_anomalib"
MARKER = "anomalib_plugin_hook"  # class attribute by which any such hook on sys.meta_path is recognised


def disabled() -> bool:
    """Whether the environment switches the hook off."""
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in {"", "0", "false", "no"}


def load_entry_points(group: str = GROUP) -> list[str]:
    """Load and call every entry point of ``group``; return the names of those that succeeded."""
    import logging
    from importlib.metadata import entry_points

    logger = logging.getLogger(LOGGER_NAME)
    loaded: list[str] = []
    seen: set[str] = set()
    try:
        found = entry_points(group=group)
    # A broken distribution's metadata can raise anything here; the hook runs inside an anomalib import that
    # must not fail because of it.
    except Exception as exc:  # noqa: BLE001
        logger.warning("Could not read the %r entry points: %s: %s", group, type(exc).__name__, exc)
        return loaded
    for entry_point in found:
        if entry_point.value in seen:  # the same distribution found twice on sys.path
            continue
        seen.add(entry_point.value)
        try:
            target = entry_point.load()
            if callable(target):
                target()
        # A plugin may raise anything while loading; one broken plugin must not break anomalib or the others.
        except Exception as exc:
            logger.warning(
                "anomalib plugin %r (%s) failed to load and is skipped: %s: %s",
                entry_point.name,
                entry_point.value,
                type(exc).__name__,
                exc,
            )
            logger.debug("Traceback of the failed anomalib plugin %r", entry_point.name, exc_info=True)
        else:
            loaded.append(entry_point.name)
    return loaded


class _WatchedLoader:
    """Wraps the loader of a watched module to report when the module starts and ends executing."""

    def __init__(self, hook: "PluginHook", loader: object) -> None:
        self._hook = hook
        self._loader = loader

    def __getattr__(self, name: str) -> object:
        return getattr(self._loader, name)

    def create_module(self, spec: object) -> object:
        """Delegate to the real loader."""
        return self._loader.create_module(spec)

    def exec_module(self, module: object) -> None:
        """Give the module back its real loader, execute it, then tell the hook."""
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader
        self._hook.enter()
        done = False
        try:
            self._loader.exec_module(module)
            done = True
        finally:
            self._hook.leave(module, done)


class PluginHook:
    """Meta-path finder that calls ``callback`` after imports of ``trigger`` (a module of ``package``).

    The callback runs when the outermost import of a ``package`` module that brought ``trigger`` in
    has finished, so every ``package`` module it imports is complete.
    """

    anomalib_plugin_hook = True

    def __init__(
        self,
        package: str = "anomalib",
        trigger: str = "anomalib.models",
        callback: "Callable[[], object]" = load_entry_points,
    ) -> None:
        self.package = package
        self.trigger = trigger
        self.callback = callback
        self.fired = 0
        self._prefix = package + "."
        self._depth: dict[int, int] = {}
        self._pending = False
        self._firing = False

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> object:
        """Find ``fullname`` with the other finders; wrap the loader of ``package`` modules."""
        if fullname != self.package and not fullname.startswith(self._prefix):
            return None
        finders = sys.meta_path
        if self in finders:
            finders = finders[finders.index(self) + 1 :]
        spec = None
        for finder in finders:
            find = getattr(finder, "find_spec", None)
            if find is not None:
                spec = find(fullname, path, target)
                if spec is not None:
                    break
        loader = getattr(spec, "loader", None)
        if loader is not None and hasattr(loader, "exec_module") and hasattr(loader, "create_module"):
            spec.loader = _WatchedLoader(self, loader)
        return spec

    def enter(self) -> None:
        """A watched module starts executing in this thread."""
        thread = get_ident()
        self._depth[thread] = self._depth.get(thread, 0) + 1

    def leave(self, module: object, done: bool) -> None:
        """A watched module has finished executing (``done``) or failed."""
        thread = get_ident()
        depth = self._depth.pop(thread, 1) - 1
        if depth:
            self._depth[thread] = depth
        name = module.__name__
        if done and name == self.trigger:
            self._pending = True
        if done and not depth and self._pending and not self._firing:
            self._pending = False
            # The import system binds a submodule on its parent only after this returns; the
            # callback may already need ``parent.child`` (e.g. ``import anomalib.models`` then use it).
            parent, _, child = name.rpartition(".")
            if parent in sys.modules:
                setattr(sys.modules[parent], child, sys.modules.get(name, module))
            self.fire()

    def fire(self) -> None:
        """Run the callback unless disabled; never raise into the import that triggered it."""
        if disabled():
            return
        self._firing = True
        try:
            self.callback()
        # The import that triggered the hook must never see the callback's error, whatever it is.
        except Exception as exc:  # noqa: BLE001
            import logging

            logging.getLogger(LOGGER_NAME).warning("anomalib plugin hook failed: %s: %s", type(exc).__name__, exc)
        finally:
            self._firing = False
            self.fired += 1


def install() -> PluginHook | None:
    """Put a :class:`PluginHook` first on ``sys.meta_path`` unless one is there; return the active hook or None."""
    if disabled():
        return None
    for finder in sys.meta_path:
        if getattr(finder, MARKER, False):
            return finder
    hook = PluginHook()
    sys.meta_path.insert(0, hook)
    return hook


def uninstall() -> None:
    """Remove every hook of this kind from ``sys.meta_path``."""
    sys.meta_path[:] = [finder for finder in sys.meta_path if not getattr(finder, MARKER, False)]
