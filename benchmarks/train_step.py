"""Time one PCSNet training step and the share of it spent on pseudo-anomaly synthesis.

Measures, in one run on this machine: the synthesis call, and a whole training step
(synthesis + three views + losses + backward + Adam) at the given size and batch, with a
randomly initialised backbone (nothing is downloaded). Prints medians and the ratio.

    python benchmarks/train_step.py --backbone wide_resnet50_2 --size 224 --batch 2 --steps 5
"""

import argparse
import statistics
import time

import torch

from pcsnet_anomalib.models.pcsnet import PatchExchange, PcsnetLoss, PcsnetModel, load_preset


def main() -> None:
    """Command line: time the synthesis and whole training steps, print their medians and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="wide_resnet50_2")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--preset", default="mvtec_ad/bottle")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = PcsnetModel(backbone=args.backbone, pre_trained=False).train()
    images = torch.rand(args.batch, 3, args.size, args.size)
    with torch.no_grad():
        model.initialize_prototypes(model.describe(images).sum(dim=0), args.batch)
    synthesizer = PatchExchange(load_preset(args.preset), seed=0)
    loss_fn = PcsnetLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, amsgrad=True)
    mixed = torch.zeros(args.batch, dtype=torch.bool)
    mixed[: (args.batch + 1) // 2] = True

    synthesis_times, step_times = [], []
    for _ in range(args.steps + 1):  # the first step warms up
        start = time.perf_counter()
        anomalous, mask = synthesizer(images)
        synthesized = time.perf_counter()
        outputs = model.training_outputs(images, anomalous, mixed)
        loss = loss_fn(outputs, model.radius, mask, mixed)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        end = time.perf_counter()
        synthesis_times.append(synthesized - start)
        step_times.append(end - start)
    synthesis = statistics.median(synthesis_times[1:])
    step = statistics.median(step_times[1:])
    print(f"backbone={args.backbone} size={args.size} batch={args.batch} threads={torch.get_num_threads()}")
    print(f"training step: {step * 1000:.0f} ms (median of {args.steps})")
    print(f"synthesis ({args.preset}): {synthesis * 1000:.2f} ms = {100 * synthesis / step:.2f}% of the step")


if __name__ == "__main__":
    main()
