"""Few-shot benchmark protocol on top of anomalib's benchmark pipeline, and its result tables."""

from pcsnet_anomalib.benchmark.pipeline import KShotBenchmark, KShotBenchmarkJob, Protocol

__all__ = ["KShotBenchmark", "KShotBenchmarkJob", "Protocol"]
