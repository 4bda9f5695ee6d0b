"""The PFM/PEFM parity tool's logic, without the authors' code.

Their files are not in this repository, so the tool's full run (``python -m tools.pfm_parity --authors-code ...``,
report in ``benchmarks/results/parity_pfm.md``) cannot run here. These tests drive the same functions with a
re-implementation of their mapping network's naming and layout (spec §3.1), and a made-up source file for the
loader: the key map, the parameter-order check, the guarded copy, the loader that executes only definitions,
the ``.cuda()`` neutraliser, their transcribed formulas, and the training/inference comparison itself.
"""

from pathlib import Path

import pytest
import torch
from torch import nn

from pcsnet_anomalib.models.pfm import FeatureMapping, Pfm, position_encoding_2d
from tests.unit.test_pfm_model import one_thread  # noqa: F401 (autouse fixture: tiny tensors, one thread)
from tools.parity_mapping import Difference
from tools.pfm_parity import (
    Check,
    authors_fusion,
    authors_level_map,
    authors_mapping_key,
    compare_training_and_inference,
    copy_authors_weights,
    cuda_calls_stay_on_cpu,
    load_authors_definitions,
    main,
    report,
)


class _Block(nn.Module):
    """Their ``Conv_BN_Relu``: a ``.conv`` Sequential of a 1x1 conv, optionally BN and ReLU."""

    def __init__(self, in_dim: int, out_dim: int, bn: bool = True, relu: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_dim, out_dim, 1)]
        layers += [nn.BatchNorm2d(out_dim)] if bn else []
        layers += [nn.ReLU(inplace=True)] if relu else []
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _AuthorsNamedMapping(nn.Module):
    """Their "small" ``DualProjection(WithPE)Net`` layout and names (spec §3.1), PE added to both inputs."""

    def __init__(self, cs: int, ct: int, c: int, pe: bool = False, shared_first: bool = False) -> None:
        super().__init__()
        if shared_first:  # another registration order, for the order check
            self.shared_coder = _Block(2 * c, c, bn=False, relu=False)
        self.encoder1 = nn.Sequential(_Block(cs, cs // 2 + c), _Block(cs // 2 + c, 2 * c))
        if not shared_first:
            self.shared_coder = _Block(2 * c, c, bn=False, relu=False)
        self.decoder1 = nn.Sequential(
            _Block(c, 2 * c), _Block(2 * c, ct // 2 + c), _Block(ct // 2 + c, ct, bn=False, relu=False)
        )
        self.encoder2 = nn.Sequential(_Block(ct, ct // 2 + c), _Block(ct // 2 + c, 2 * c))
        self.decoder2 = nn.Sequential(
            _Block(c, 2 * c), _Block(2 * c, cs // 2 + c), _Block(cs // 2 + c, cs, bn=False, relu=False)
        )
        self.pe = pe

    def forward(self, xs: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pe:
            xs = xs + position_encoding_2d(*xs.shape[1:])
            xt = xt + position_encoding_2d(*xt.shape[1:])
        xt_hat = self.decoder1(self.shared_coder(self.encoder1(xs)))
        xs_hat = self.decoder2(self.shared_coder(self.encoder2(xt)))
        return xs_hat, xt_hat


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("encoder1.0.conv.0.weight", "source_encoder.0.weight"),
        ("encoder1.1.conv.1.running_var", "source_encoder.4.running_var"),
        ("shared_coder.conv.0.bias", "shared.bias"),
        ("decoder1.2.conv.0.weight", "target_decoder.6.weight"),
        ("encoder2.0.conv.1.num_batches_tracked", "target_encoder.1.num_batches_tracked"),
        ("decoder2.1.conv.0.bias", "source_decoder.3.bias"),
    ],
)
def test_key_map(name: str, expected: str) -> None:
    assert authors_mapping_key(name) == expected


@pytest.mark.parametrize("name", ["encoder1.2.gamma", "shared_coder.conv.1.weight", "projector.weight"])
def test_keys_of_other_layouts_fail_loudly(name: str) -> None:
    # small_nonlocal's attention, the "less" variant's BatchNorm in the shared layer, an unknown module
    with pytest.raises(KeyError, match="parity mapping needs updating"):
        authors_mapping_key(name)


@pytest.mark.parametrize("pe", [False, True])
def test_copy_sets_every_tensor_and_the_outputs_agree(pe: bool) -> None:
    torch.manual_seed(0)
    theirs = _AuthorsNamedMapping(8, 16, 4, pe=pe)
    for module in theirs.modules():  # non-default BatchNorm statistics, so that copying them matters
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    ours = FeatureMapping(8, 16, 4, position_encoding=pe)
    copied = copy_authors_weights(theirs, ours)
    assert set(copied) == set(ours.state_dict())
    source, target = torch.randn(2, 8, 3, 5), torch.randn(2, 16, 3, 5)
    theirs.eval()
    ours.eval()
    with torch.no_grad():
        for mine, reference in zip(ours(source, target), theirs(source, target), strict=True):
            torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-6)  # eval may fold BN: float rounding


def test_copy_refuses_another_parameter_order() -> None:
    with pytest.raises(ValueError, match="Parameter orders differ"):
        copy_authors_weights(_AuthorsNamedMapping(8, 16, 4, shared_first=True), FeatureMapping(8, 16, 4, False))


def test_copy_refuses_other_widths() -> None:
    with pytest.raises(ValueError, match="Shape mismatch"):
        copy_authors_weights(_AuthorsNamedMapping(8, 16, 4), FeatureMapping(8, 16, 8, False))


def test_loader_executes_only_the_named_definitions_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "PEFM_AD.py"
    path.write_text(
        "from utils import visualize_score_maps  # ImportError, as in theirs\n"
        "raise SystemExit('module-level code must not run')\n"
        "\n"
        "def ones(n):\n"
        "    return torch.ones(n)\n"
        "\n"
        "class Net(nn.Module):\n"
        "    pass\n"
    )
    loaded = load_authors_definitions(path, ("ones", "Net"), {"torch": torch, "nn": nn})
    assert torch.equal(loaded.ones(3), torch.ones(3))
    assert issubclass(loaded.Net, nn.Module)
    assert loaded.ones.__code__.co_filename == str(path)
    assert loaded.ones.__code__.co_firstlineno == 4  # tracebacks point into their file
    with pytest.raises(LookupError, match="positionalencoding2d"):
        load_authors_definitions(path, ("ones", "positionalencoding2d"), {"torch": torch})
    with pytest.raises(FileNotFoundError, match="--authors-code"):
        load_authors_definitions(tmp_path / "missing.py", ("ones",), {})


def test_main_without_the_authors_files_fails_naming_the_option(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--authors-code"):
        main(["--authors-code", str(tmp_path)])


def test_cuda_calls_stay_on_cpu_only_inside_the_block() -> None:
    original = torch.Tensor.cuda
    tensor = torch.zeros(2)
    with cuda_calls_stay_on_cpu():
        assert tensor.cuda() is tensor
    assert torch.Tensor.cuda is original
    message = "boom"
    with pytest.raises(RuntimeError, match=message), cuda_calls_stay_on_cpu():
        raise RuntimeError(message)
    assert torch.Tensor.cuda is original


def test_transcribed_formulas_on_hand_made_tensors() -> None:
    fs, s_hat = torch.zeros(1, 2, 1, 1), torch.ones(1, 2, 1, 1)  # sum over channels of e_S^2: 2
    ft, t_hat = torch.zeros(1, 3, 1, 1), torch.full((1, 3, 1, 1), 2.0)  # e_T^2: 12
    assert authors_level_map(fs, ft, s_hat, t_hat).item() == 7.0  # (2 + 12) / 2
    levels = [torch.full((1, 1, 2, 2), 1.0), torch.full((1, 1, 1, 1), 2.0), torch.tensor([[[[0.0, 6.0]]]])]
    fused, score = authors_fusion(levels, (1, 4))
    assert fused.flatten().tolist() == [1.0, 1.5, 2.5, 3.0]  # (1 + 2 + [0, 1.5, 4.5, 6]) / 3
    assert score.tolist() == [3.0]


def _tiny_pair(learning_rates: tuple[float, float, float], pe: bool) -> tuple[Pfm, list[nn.Module]]:
    ours = Pfm(
        source_backbone="resnet18",
        target_backbone="resnet34",
        pre_trained=False,
        latent_dims=(8, 8, 12),
        position_encoding=pe,
        learning_rates=learning_rates,
        evaluator=False,
        visualizer=False,
    )
    torch.manual_seed(1)
    theirs: list[nn.Module] = []
    for mapping, cs, ct, c in zip(
        ours.model.mappings,
        ours.model.source_extractor.out_dims,
        ours.model.target_extractor.out_dims,
        (8, 8, 12),
        strict=True,
    ):
        theirs.append(_AuthorsNamedMapping(cs, ct, c, pe=pe))
        copy_authors_weights(theirs[-1], mapping)
    return ours, theirs


def _by_name(differences: list[Difference]) -> dict[str, Difference]:
    return {d.name: d for d in differences}


@pytest.mark.parametrize("pe", [False, True])
def test_training_and_inference_comparison_agrees_on_equal_models(pe: bool) -> None:
    rates = (3e-3, 3e-4, 3e-4)
    ours, theirs = _tiny_pair(rates, pe)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    differences = _by_name(compare_training_and_inference("tiny", ours, theirs, images, rates))
    assert all(d.passed for d in differences.values()), [d for d in differences.values() if not d.passed]
    for level in (1, 2, 3):
        assert f"tiny: parameters after 3 steps, level {level}" in differences
        assert f"tiny: eval, level {level}, mapped S->T (t_hat)" in differences
        assert differences[f"tiny: loss, level {level}, 3 training steps"].reference_scale > 0
    assert differences["tiny: parameter updates over 3 steps, level 1"].reference_scale > 1e-4  # it did train
    assert differences["tiny: eval, image score (max)"].reference_scale > 0


def test_training_comparison_finds_a_wrong_learning_rate_at_its_level() -> None:
    ours, theirs = _tiny_pair((3e-3, 3e-4, 3e-4), pe=False)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    # Their level-2 optimizer at 3e-3 against our 3e-4: that level's weights must differ, the others not.
    differences = _by_name(compare_training_and_inference("tiny", ours, theirs, images, (3e-3, 3e-3, 3e-4)))
    assert not differences["tiny: parameter updates over 3 steps, level 2"].passed
    assert not differences["tiny: parameters after 3 steps, level 2"].passed
    assert differences["tiny: parameter updates over 3 steps, level 1"].passed
    assert differences["tiny: parameter updates over 3 steps, level 3"].passed
    assert not differences["tiny: eval, fused anomaly map (64 px)"].passed


def test_report_states_the_command_and_each_failure() -> None:
    passing = Difference("map", 0.0, 0.0, 1.0, 1e-4)
    failing = Difference("score", 0.5, 0.5, 1.0, 1e-4)
    checks = [Check("parameters, level 1", 894_312, 894_312, 894_312), Check("lr", 3e-4, 3e-3, 3e-4)]
    text = report([passing], checks[:1], "cmd --flag", Path("/x"), 2, 0, 1.0, describe=lambda _: "abc")
    assert "Command: `cmd --flag`" in text
    assert "| 894,312 | 894,312 | 894,312 | yes |" in text
    assert "everything agrees" in text
    assert "`PEFM_AD.py` sha256 abc" in text
    text = report([passing, failing], checks, "cmd", Path("/x"), 2, 0, 1.0, describe=lambda _: "abc")
    assert "SOME QUANTITIES DISAGREE" in text
    assert "| score | 0.5 | 0.5 | 1 | 0.0001 | NO |" in text
    assert "| lr | 0.0003 | 0.003 | 0.0003 | NO |" in text
