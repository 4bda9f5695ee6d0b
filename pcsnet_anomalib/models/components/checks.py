"""Checks every model of the package makes: finite losses, and checkpoints of the model's own architecture."""

from collections.abc import Mapping

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
