"""``python -m pcsnet_anomalib.benchmark --config configs/benchmark_kshot_demo.yaml``: run a k-shot benchmark."""

from pcsnet_anomalib.benchmark.pipeline import main

if __name__ == "__main__":
    main()
