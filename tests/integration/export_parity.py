"""Running a model's torch, ONNX and OpenVINO exports on the same images, and how far their outputs are apart."""

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from anomalib.deploy import ExportType
from anomalib.engine import Engine
from anomalib.models.components import AnomalibModule

# float32 on the CPU: OpenVINO otherwise runs in bfloat16 where the CPU supports it.
OPENVINO_FP32 = {"INFERENCE_PRECISION_HINT": "f32"}
MAX_RELATIVE_ERROR = 1e-4


def relative_errors(actual: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """Relative L2 error, and the largest absolute difference relative to the largest expected magnitude."""
    scale = max(float(np.abs(expected).max()), 1e-12)
    relative_l2 = float(np.linalg.norm(actual - expected) / max(float(np.linalg.norm(expected)), 1e-12))
    return relative_l2, float(np.abs(actual - expected).max()) / scale


def run_export(path: Path, export_type: str, images: torch.Tensor) -> dict[str, np.ndarray]:
    """The outputs of one export (``torch``, ``onnx`` or ``openvino``, float32) on ``images``, by output name."""
    if export_type == "torch":
        loaded = torch.load(path, map_location="cpu", weights_only=False)["model"].eval()
        with torch.no_grad():
            output = loaded(images)
        return {field: getattr(output, field).numpy() for field in ("anomaly_map", "pred_score", "pred_label")}
    if export_type == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        values = session.run(None, {session.get_inputs()[0].name: images.numpy()})
        return {output.name: value for output, value in zip(session.get_outputs(), values, strict=True)}
    import openvino

    compiled = openvino.Core().compile_model(str(path), "CPU", OPENVINO_FP32)
    result = compiled(images.numpy())
    return {output.any_name: result[output] for output in compiled.outputs}


@dataclass
class Parity:
    """The worst relative difference per export, the failures found, and how many scores were inside (0, 1)."""

    worst: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    unsaturated: int = 0

    def figures(self) -> str:
        """``torch 0.00e+00, onnx 1.2e-07, ...``."""
        return ", ".join(f"{export_type} {error:.2e}" for export_type, error in self.worst.items())


def raw_scores(model: AnomalibModule, normalised: np.ndarray) -> np.ndarray:
    """Invert the post-processor's image-score normalisation, ``(s - threshold) / (max - min) + 0.5``.

    Only scores strictly inside (0, 1) can be inverted (the normalisation clamps). The normalisation multiplies
    float rounding by ``1 / (max - min)``: thousands for a barely trained model whose validation scores hardly vary,
    so the raw scores are what says whether an export computes what the model computes.
    """
    post = model.post_processor
    span = float(post.image_max - post.image_min)
    return (normalised - 0.5) * span + float(post.image_threshold)


def export_parity(
    model: AnomalibModule,
    engine: Engine,
    export_root: Path,
    inputs: Iterable[torch.Tensor],
    compare_raw_scores: bool = False,
) -> Parity:
    """Export ``model`` to torch, ONNX and OpenVINO and compare each export's outputs with the model's on ``inputs``.

    Anomaly maps and scores must be within :data:`MAX_RELATIVE_ERROR` (relative L2 and relative max difference),
    the torch export bit-identical, and labels equal; every breach is a line of ``problems``. With
    ``compare_raw_scores`` the image scores inside (0, 1) are compared before normalisation (:func:`raw_scores`) and
    the clamped ones must be equal.
    """
    exported = {
        export_type: engine.export(model, export_type=ExportType(export_type), export_root=export_root)
        for export_type in ("torch", "onnx", "openvino")
    }
    parity = Parity(worst=dict.fromkeys(exported, 0.0))
    for index, images in enumerate(inputs):
        with torch.no_grad():
            expected = model(images)
        scores = expected.pred_score.numpy()
        parity.unsaturated += int(((scores > 0) & (scores < 1)).sum())
        for export_type, path in exported.items():
            actual = run_export(Path(path), export_type, images)
            if actual["anomaly_map"].shape != tuple(expected.anomaly_map.shape):  # dynamic batch
                parity.problems.append(f"input {index}: {export_type} map shape {actual['anomaly_map'].shape}")
                continue
            for name in ("anomaly_map", "pred_score"):
                wanted = getattr(expected, name).numpy()
                if name == "pred_score" and compare_raw_scores:
                    inside = (wanted > 0) & (wanted < 1)
                    if not np.array_equal(actual[name][~inside], wanted[~inside]):
                        parity.problems.append(f"input {index}: {export_type} clamped scores differ")
                    if not inside.any():
                        continue
                    actual = {**actual, name: raw_scores(model, actual[name][inside])}
                    wanted = raw_scores(model, wanted[inside])
                if export_type == "torch" and not np.array_equal(actual[name], wanted):
                    parity.problems.append(f"input {index}: torch {name} is not bit-identical")
                relative_l2, relative_max = relative_errors(actual[name], wanted)
                parity.worst[export_type] = max(parity.worst[export_type], relative_l2, relative_max)
                if max(relative_l2, relative_max) >= MAX_RELATIVE_ERROR:
                    parity.problems.append(
                        f"input {index}: {export_type} {name} L2 {relative_l2:.2e} max {relative_max:.2e}"
                    )
            if not np.array_equal(actual["pred_label"], expected.pred_label.numpy()):
                parity.problems.append(f"input {index}: {export_type} labels {actual['pred_label']} scores {scores}")
    return parity
