"""Run the official PCSNet modules and ours with the same weights and inputs; report the differences.

    python tools/parity.py --authors-code /tmp/pcsnet-authors [--rotation-sensitive] [--output report.md]

``--authors-code`` is a checkout of github.com/yuxin-jiang/PCSNet (not part of this repository).
Their fixed sizes (64-cell grid, 224-pixel output, 896 CAS channels, 200 prior channels) need
WideResNet-50-2 at 224 x 224. Both backbones get random weights, copied ours -> theirs; their
descriptor, radius and CAS weights are copied theirs -> ours by the explicit maps of
:mod:`tools.parity_mapping`. Their code calls ``.cuda()`` inside ``AddCoords``; that is turned
off at run time (``use_cuda=False``), their files are not modified.

Where a documented deviation makes the outputs differ, both sides get the same input for the
parts after it (our backbone features, our grid mask) and the deviation is named in the report.
"""

import argparse
import contextlib
import io
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from pcsnet_anomalib.models.pcsnet import PcsnetLoss, PcsnetModel
from tools.parity_mapping import (
    Difference,
    authors_adaptor_key,
    authors_cas_key,
    compare,
    copy_mapped_weights,
    format_report,
    import_authors_modules,
)

IMAGE_SIZE = 224  # hard-coded in the official CAS and descriptor
ROTATION_CATEGORY, PLAIN_CATEGORY = "screw", "bottle"


def _no_dropout(*modules: nn.Module) -> None:
    """Dropout draws random numbers differently in each code base: switch it off for the loss comparison.

    Matched by class name: torch's ``nn.Dropout*`` and our own seeded dropout, which is no torch subclass.
    """
    for module in modules:
        for child in module.modules():
            if "Dropout" in type(child).__name__:
                child.eval()


def run(authors_code: Path, rotation_sensitive: bool, batch: int, seed: int) -> tuple[list[Difference], list[str]]:
    """Build both sides, run inference and one training step's losses; return the differences and notes."""
    authors = import_authors_modules(authors_code)
    torch.manual_seed(seed)
    ours = PcsnetModel(backbone="wide_resnet50_2", pre_trained=False, reduce_channels=rotation_sensitive)

    # Backbone: ours (timm) -> theirs (their torchvision copy); timm uses torchvision's names.
    # timm zero-initialises each block's last BatchNorm, which would make every block output non-negative
    # and hide deviation 5; random BatchNorm affine parameters and statistics make it visible.
    for module in ours.feature_extractor.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data.uniform_(0.2, 1.0)
            module.bias.data.uniform_(-0.5, 0.5)
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    their_backbone = authors.backbone(pretrained=False).eval()
    timm_state = {k.removeprefix("feature_extractor."): v for k, v in ours.feature_extractor.state_dict().items()}
    missing = their_backbone.load_state_dict(timm_state, strict=False).missing_keys
    if any(k.startswith(("conv1", "bn1", "layer1", "layer2", "layer3")) for k in missing):
        msg = f"Backbone weights not covered: {missing}"
        raise ValueError(msg)

    images = torch.rand(batch, 3, IMAGE_SIZE, IMAGE_SIZE)
    anomalous = images.clone()
    mask = torch.zeros(batch, 1, IMAGE_SIZE, IMAGE_SIZE)
    anomalous[:, :, 50:110, 70:140] = torch.rand(batch, 3, 60, 70)
    mask[:, :, 50:110, 70:140] = 1.0
    mixed = torch.zeros(batch, dtype=torch.bool)
    mixed[: (batch + 1) // 2] = True

    differences: list[Difference] = []
    notes: list[str] = []
    with torch.no_grad():
        ours_features = ours.extract_features(images)
        theirs_raw = their_backbone((images - ours.input_mean) / ours.input_std)
    for level, (mine, theirs) in enumerate(zip(ours_features, theirs_raw, strict=True)):
        differences.append(
            compare(f"backbone level {level + 1}, after ReLU", mine, F.relu(theirs), note="deviation 5: theirs ReLU'd")
        )
        differences.append(
            compare(
                f"backbone level {level + 1}, as returned",
                mine,
                theirs,
                note="deviation 5: ours after the block's ReLU, theirs leaky_relu of the pre-ReLU output",
                deviation=True,
            )
        )

    def features_of(x: torch.Tensor) -> list[torch.Tensor]:
        """Both sides use our backbone's features from here on (isolates deviation 5)."""
        return [f.clone() for f in ours.extract_features(x)]

    # Their adaptor computes its prototypes from its randomly initialised descriptor at construction,
    # in training mode (as our Lightning module does on train start).
    category = ROTATION_CATEGORY if rotation_sensitive else PLAIN_CATEGORY
    with contextlib.redirect_stderr(io.StringIO()):  # their tqdm bar
        adaptor = authors.adaptor(features_of, [(images, None, None, None, None, None)], 1, "cpu", category)
    with contextlib.redirect_stdout(io.StringIO()):  # their "INFO: Using ResNet" print
        cas = authors.casnet()
    copy_mapped_weights(adaptor, ours, lambda k: authors_adaptor_key(k, rotation_sensitive), ("radius", "descriptor."))
    copy_mapped_weights(cas, ours, authors_cas_key, ("cas.",))
    ours.train()
    with torch.no_grad():
        ours.initialize_prototypes(ours.describe(images).sum(dim=0), batch)
    # That pass also updated our BatchNorm running statistics a second time; restore theirs.
    copy_mapped_weights(adaptor, ours, lambda k: authors_adaptor_key(k, rotation_sensitive), ("radius", "descriptor."))
    differences.append(compare("prototypes", ours.memory.prototypes, adaptor.C.t()))

    # Inference.
    ours.eval()
    adaptor.eval()
    cas.eval()
    with torch.no_grad():
        their_descriptor, _ = adaptor.Descriptor(features_of(images))
        their_prior, their_guide = adaptor(features_of(images), 2, None)
        their_out = cas(their_guide, their_prior)
        their_map = torch.from_numpy(authors.gaussian_smooth(their_out.mean(dim=1).numpy(), sigma=4))

        # The stages of PcsnetModel.forward through its public parts (prototype memory, CAS, pyramid bins), to
        # compare each with theirs; the anomaly map below runs forward itself, so it checks that forward agrees.
        descriptor = ours.describe(images)
        nearest = ours.memory.nearest(descriptor, ours.prior_channels)
        grid = descriptor.shape[-2:]
        our_prior = nearest.transpose(1, 2).reshape(batch, ours.prior_channels, *grid)
        scores = ours.cas(descriptor[:, : ours.cas_channels], our_prior, ours.pyramid_bins(tuple(grid)))
        our_out = F.interpolate(scores, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=True)
        our_map = ours(images).anomaly_map[:, 0]
    border = 16  # = the 4-sigma radius of both blurs
    differences += [
        compare("descriptor", descriptor, their_descriptor),
        compare(
            "200 smallest prototype distances",
            our_prior,
            their_prior,
            rtol=1e-3,
            note="float32 cancellation in |f|^2 + |c|^2 - 2 f.c (both sides), summed in a different order",
        ),
        compare("CAS output (224 px, before blur)", our_out, their_out),
        compare(
            "anomaly map, interior",
            our_map[:, border:-border, border:-border],
            their_map[:, border:-border, border:-border],
        ),
        compare(
            "anomaly map, whole",
            our_map,
            their_map,
            note="within 16 px of the border: torch 'reflect' pad vs scipy 'reflect' (edge repeated)",
            deviation=True,
        ),
    ]

    # Training: losses of one step on the same three views, dropout off on both sides.
    ours.train()
    adaptor.train()
    cas.train()
    _no_dropout(ours, cas)
    grid_mask = F.adaptive_avg_pool2d(mask, tuple(grid))  # deviation 8: both get our grid mask
    with torch.no_grad():
        outputs = ours.training_outputs(images, anomalous, mixed, keep_anomalous_distances=True)
        official = PcsnetLoss(official_anomalous_term=True)(outputs, ours.radius, mask, mixed)
        paper = PcsnetLoss()(outputs, ours.radius, mask, mixed)
        select = mixed.view(-1, 1, 1, 1)
        mixed_features = [
            torch.where(select, a, n) for n, a in zip(features_of(images), features_of(anomalous), strict=True)
        ]
        l_normal, _, _, _ = adaptor(features_of(images), 0, grid_mask)
        l_anomalous, _, _, _ = adaptor(features_of(anomalous), 1, grid_mask)
        _, image_scores, mixed_prior, mixed_guide = adaptor(mixed_features, 2, grid_mask)
        their_segmentation = cas(mixed_guide, mixed_prior)
        l_seg = nn.MSELoss()(their_segmentation, mask * select)
        l_pdc = nn.CrossEntropyLoss(reduction="sum")(image_scores.squeeze(), mixed.float())
        their_total = l_normal + l_anomalous + 50 * l_pdc + 40 * l_seg
    differences += [
        compare("CAS output, mixed view (training mode)", outputs.segmentation, their_segmentation),
        compare("loss: normal compactness", official["normal"], l_normal),
        compare(
            "loss: anomalous (official term)", official["anomalous"], l_anomalous, note="official_anomalous_term=True"
        ),
        compare("loss: PDC", official["pdc"], l_pdc),
        compare("loss: segmentation", official["segmentation"], l_seg),
        compare("loss: total (official anomalous term)", official["loss"], their_total),
    ]
    notes.append(
        f"deviation 1: our default (paper) anomalous term = {paper['anomalous'].item():.6g}, "
        f"official = {l_anomalous.item():.6g}; total {paper['loss'].item():.6g} vs {their_total.item():.6g}"
    )
    return differences, notes


def main() -> None:
    """Command line: run the comparison, print the report (and write it with ``--output``); exit 1 on a failure."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authors-code", type=Path, required=True, help="checkout of yuxin-jiang/PCSNet")
    parser.add_argument("--rotation-sensitive", action="store_true", help="compare the channel-halving descriptor")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="also write the markdown report here")
    args = parser.parse_args()

    start = time.perf_counter()
    differences, notes = run(args.authors_code.resolve(), args.rotation_sensitive, args.batch, args.seed)
    mode = "rotation-sensitive (screw)" if args.rotation_sensitive else "default (bottle)"
    lines = [
        (
            f"Parity: ours vs official PCSNet modules, {mode}, wide_resnet50_2 random weights, "
            f"batch {args.batch}, {IMAGE_SIZE} px, float32, seed {args.seed}"
        ),
        f"torch {torch.__version__}, {platform.machine()}, {time.perf_counter() - start:.0f} s",
        "",
        format_report(differences),
        "",
        *[f"- {note}" for note in notes],
    ]
    report = "\n".join(lines)
    print(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report + "\n")
    if not all(d.acceptable for d in differences):
        sys.exit(1)


if __name__ == "__main__":
    main()
