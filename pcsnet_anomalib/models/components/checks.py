"""Checks every model of the package makes: finite losses, and checkpoints of the model's own architecture."""

from collections.abc import Mapping
from typing import Any

import torch


class NonFiniteLossError(RuntimeError):
    """Raised when a training loss is NaN or infinite, before a broken checkpoint can be written."""


class IncompatibleCheckpointError(ValueError):
    """Raised when a checkpoint was written by another model, or by this model with another architecture."""


def check_finite_loss(losses: Mapping[str, torch.Tensor], epoch: int, step: int) -> None:
    """Raise :class:`NonFiniteLossError` naming the epoch, step and terms if ``losses["loss"]`` is not finite."""
    if not torch.isfinite(losses["loss"]):
        terms = {name: float(value) for name, value in losses.items()}
        msg = f"Non-finite training loss at epoch {epoch}, step {step}: {terms}."
        raise NonFiniteLossError(msg)


def shape_differences(
    expected: Mapping[str, torch.Tensor],
    found: Mapping[str, torch.Tensor],
    sized_at_training: tuple[str, ...] = (),
) -> list[str]:
    """The torch-model tensors (``model.*``) that are missing, unexpected or of another shape in ``found``, sorted.

    Tensors whose names start with one of ``sized_at_training`` (e.g. prototypes) are left out: their shapes
    depend on the training data, not on the architecture.
    """

    def shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
        return {
            name: tuple(tensor.shape)
            for name, tensor in state.items()
            if isinstance(tensor, torch.Tensor) and name.startswith("model.") and not name.startswith(sized_at_training)
        }

    want, have = shapes(expected), shapes(found)
    problems = [f"missing {name}" for name in want.keys() - have.keys()]
    problems += [f"unexpected {name}" for name in have.keys() - want.keys()]
    problems += [
        f"{name}: checkpoint {have[name]}, model {shape}"
        for name, shape in want.items()
        if have.get(name, shape) != shape
    ]
    return sorted(problems)


class ArchitectureCheckpointMixin:
    """Lightning hooks that record a model's architecture in its checkpoints and refuse other models' checkpoints.

    Put it before ``AnomalibModule`` in the bases. ``on_save_checkpoint`` writes ``{"format": checkpoint_format,
    **architecture()}`` under ``checkpoint_key``; ``on_load_checkpoint`` (before Lightning loads any tensor) raises
    :class:`IncompatibleCheckpointError` when that section is missing or of another format, when
    :meth:`architecture_differences` names a setting no tensor shape shows, or when the torch-model tensors'
    shapes differ (:func:`shape_differences`, leaving out ``sized_at_training``), so a wrong checkpoint fails with
    a message naming both architectures instead of a list of mismatched tensors.
    """

    checkpoint_key: str
    checkpoint_format: int
    checkpoint_writer: str  # who writes such checkpoints, for the message ("Pfm or Pefm")
    sized_at_training: tuple[str, ...] = ()

    def architecture(self) -> dict[str, Any]:
        """The settings that define the model's tensors, saved with the checkpoint (``"model"``: the class name)."""
        raise NotImplementedError

    def architecture_differences(self, saved: Mapping[str, Any]) -> list[str]:
        """Differences from the ``saved`` architecture that the tensors' shapes do not show (none by default)."""
        del saved
        return []

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the architecture beside the state dict, for :meth:`on_load_checkpoint`'s check."""
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]
        checkpoint[self.checkpoint_key] = {"format": self.checkpoint_format, **self.architecture()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse, by name, a checkpoint of another model or of another architecture, before loading tensors."""
        saved = checkpoint.get(self.checkpoint_key)
        if saved is None or saved.get("format") != self.checkpoint_format:
            msg = (
                f"This checkpoint was not written by {self.checkpoint_writer} (format {self.checkpoint_format}); its "
                f"hyper-parameters are {sorted(checkpoint.get('hyper_parameters', {}))}: load it with the model class "
                "that trained it."
            )
            raise IncompatibleCheckpointError(msg)
        differences = self.architecture_differences(saved)
        problems = shape_differences(
            self.state_dict(),  # type: ignore[attr-defined]
            checkpoint.get("state_dict", {}),
            self.sized_at_training,
        )
        if problems:
            differences.append(f"{len(problems)} tensors differ (first: {'; '.join(problems[:3])})")
        if differences:
            msg = (
                f"The checkpoint's architecture is {saved}, this model's is {self.architecture()}: "
                f"{'; '.join(differences)}. Build the model with the checkpoint's settings, e.g. "
                f"{saved.get('model', type(self).__name__)}.load_from_checkpoint(path)."
            )
            raise IncompatibleCheckpointError(msg)
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
