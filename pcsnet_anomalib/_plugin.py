"""Registration of pcsnet-anomalib's classes into anomalib.

:func:`register` is the ``anomalib.plugins`` entry point (``pcsnet``), called by the start-up hook
(``_pcsnet_anomalib_hook``, installed by ``pcsnet_anomalib.pth``) right after ``anomalib.models`` is
imported, and again by the last line of ``pcsnet_anomalib/__init__.py``. It makes the classes below
visible to anomalib's own lookups:

- ``anomalib.models.get_model("pcsnet")``, ``list_models()`` and ``anomalib <cmd> --model Pcsnet``
  scan imported ``AnomalibModule`` subclasses, so importing the model module is enough;
- ``get_model({"class_path": "Pcsnet"})`` (what ``anomalib benchmark`` calls) does
  ``getattr(anomalib.models, "Pcsnet")``, and ``get_datamodule({"class_path": "PcsnetDemo"})`` does
  ``getattr(anomalib.data, "PcsnetDemo")``, so the classes are also set on those modules;
- ``--data PcsnetDemo`` resolves among imported ``AnomalibDataModule`` subclasses (jsonargparse).
"""

import importlib
import logging
import sys

logger = logging.getLogger("pcsnet_anomalib")

PACKAGE = "pcsnet_anomalib"

MODELS: dict[str, str] = {
    "Pcsnet": "pcsnet_anomalib.models:Pcsnet",
    "Pfm": "pcsnet_anomalib.models:Pfm",
    "Pefm": "pcsnet_anomalib.models:Pefm",
    "Prn": "pcsnet_anomalib.models:Prn",
}
"""Name set on ``anomalib.models`` -> ``module:attribute`` of an ``AnomalibModule`` subclass."""

DATAMODULES: dict[str, str] = {
    "PcsnetDemo": "pcsnet_anomalib.data:PcsnetDemo",
    "KShotMVTecAD": "pcsnet_anomalib.data:KShotMVTecAD",
    "KShotMPDD": "pcsnet_anomalib.data:KShotMPDD",
    "KShotFolder": "pcsnet_anomalib.data:KShotFolder",
    "KShotPcsnetDemo": "pcsnet_anomalib.data:KShotPcsnetDemo",
}
"""Name set on ``anomalib.data`` -> ``module:attribute`` of an ``AnomalibDataModule`` subclass."""


def _initialising_submodule(package: str = PACKAGE) -> str | None:
    """Name of a submodule of ``package`` that is being imported right now, if any."""
    prefix = package + "."
    for name, module in list(sys.modules.items()):
        if not name.startswith(prefix) or name == __name__:
            continue
        spec = getattr(module, "__spec__", None)
        if spec is not None and getattr(spec, "_initializing", False):
            return name
    return None


def _load(target: str) -> type:
    """Import ``module:attribute`` and return the attribute."""
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def _export(namespace: object, name: str, cls: type, package: str = PACKAGE) -> bool:
    """Set ``namespace.name = cls`` and list it in ``namespace.__all__``; refuse to shadow anomalib's own class."""
    current = getattr(namespace, name, None)
    owner = getattr(current, "__module__", None) or ""
    if current is not None and current is not cls and owner != package and not owner.startswith(package + "."):
        logger.warning(
            "%s.%s already exists (%s.%s); %s.%s is not registered under that name.",
            namespace.__name__,  # type: ignore[attr-defined]
            name,
            current.__module__,
            getattr(current, "__qualname__", current),
            cls.__module__,
            cls.__qualname__,
        )
        return False
    setattr(namespace, name, cls)
    exported = getattr(namespace, "__all__", None)
    if isinstance(exported, list) and name not in exported:
        exported.append(name)
    return True


def register() -> bool:
    """Make pcsnet-anomalib's models and datamodules visible to anomalib; idempotent (the entry point).

    Returns False when nothing was done because a submodule of the package is half-imported (the hook
    fired from inside ``import pcsnet_anomalib``; ``pcsnet_anomalib/__init__.py`` calls this again at
    its end) or when a class could not be registered (logged as a warning).
    """
    return register_classes(PACKAGE, MODELS, DATAMODULES)


def register_classes(package: str, models: dict[str, str], datamodules: dict[str, str]) -> bool:
    """Register ``models`` on ``anomalib.models`` and ``datamodules`` on ``anomalib.data`` (see :func:`register`).

    Does nothing while a submodule of ``package`` is being imported. Each table maps the public name
    to ``"module:attribute"``; a class that fails to import is skipped with a warning.
    """
    pending = _initialising_submodule(package)
    if pending is not None:
        logger.debug("%s is being imported; registration deferred to the end of %s/__init__.", pending, package)
        return False

    import anomalib.data
    import anomalib.models
    from anomalib.data import AnomalibDataModule
    from anomalib.models.components import AnomalibModule

    ok = True
    tables = ((anomalib.models, models, AnomalibModule), (anomalib.data, datamodules, AnomalibDataModule))
    for namespace, table, base in tables:
        for name, target in table.items():
            try:
                cls = _load(target)
            # This runs inside anomalib's own imports: whatever a class's import raises must become a warning,
            # never an error that breaks ``import anomalib.models`` for every user of the environment.
            except Exception as exc:  # noqa: BLE001
                logger.warning("Could not register %s (%s): %s: %s", name, target, type(exc).__name__, exc)
                ok = False
                continue
            if not (isinstance(cls, type) and issubclass(cls, base)):
                logger.warning("Not registered: %s is not a subclass of %s.", target, base.__name__)
                ok = False
                continue
            if base is AnomalibModule and base not in cls.__bases__:
                # get_model(name) and list_models() only scan AnomalibModule.__subclasses__() (direct ones).
                logger.warning(
                    "%s does not subclass AnomalibModule directly: get_model(%r) will not find it.", target, name
                )
            ok = _export(namespace, name, cls, package) and ok
    return ok
