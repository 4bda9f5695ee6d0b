"""Parity logic: the official-name weight maps, the guarded copy and the difference report, without their code."""

import pytest
import torch
from torch import nn

from pcsnet_anomalib.models.pcsnet.torch_model import ContextAwareSegmentation
from tools.parity_mapping import (
    authors_adaptor_key,
    authors_cas_key,
    compare,
    copy_mapped_weights,
    format_report,
)


class _OfficialNamedCas(nn.Module):
    """The official CAS module layout (names and nesting of ``casnet.Model``) at a small width."""

    def __init__(self, channels: int, prior: int, bins: int = 4) -> None:
        super().__init__()

        def double() -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                nn.ReLU(),
                nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                nn.ReLU(),
            )

        self.cls = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.ReLU(),
            nn.Dropout2d(0.1),
            nn.Conv2d(channels, 1, 1),
        )
        self.corr_conv = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(channels + prior, channels, 1, bias=False), nn.ReLU()) for _ in range(bins)]
        )
        self.beta_conv = nn.ModuleList([double() for _ in range(bins)])
        self.inner_cls = nn.ModuleList([nn.Sequential(nn.Conv2d(channels, 1, 1)) for _ in range(bins)])
        self.alpha_conv = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(2 * channels, channels, 1, bias=False), nn.ReLU()) for _ in range(bins - 1)]
        )
        self.res1 = nn.Sequential(nn.Conv2d(channels * bins, channels, 1, bias=False), nn.ReLU())
        self.res2 = double()


class _Holder(nn.Module):
    def __init__(self, cas: nn.Module) -> None:
        super().__init__()
        self.cas = cas


def test_cas_map_copies_every_weight_and_outputs_agree() -> None:
    torch.manual_seed(0)
    official = _OfficialNamedCas(8, 5)
    ours = _Holder(ContextAwareSegmentation(8, 5)).eval()
    copied = copy_mapped_weights(official, ours, authors_cas_key, ("cas.",))
    assert set(copied) == {k for k, v in ours.state_dict().items() if isinstance(v, torch.Tensor)}  # every weight
    guide, prior = torch.rand(2, 8, 12, 12), torch.rand(2, 5, 12, 12)
    out = ours.cas(guide, prior, [(10, 10), (5, 5), (3, 3), (2, 2)])
    again = _Holder(ContextAwareSegmentation(8, 5)).eval()
    copy_mapped_weights(official, again, authors_cas_key, ("cas.",))
    assert compare("cas", again.cas(guide, prior, [(10, 10), (5, 5), (3, 3), (2, 2)]), out).max_abs == 0.0


def test_copy_refuses_to_leave_target_tensors_unset() -> None:
    official = _OfficialNamedCas(8, 5)
    del official.res1
    with pytest.raises(ValueError, match=r"cas\.fuse\.0\.weight"):
        copy_mapped_weights(official, _Holder(ContextAwareSegmentation(8, 5)), authors_cas_key, ("cas.",))


def test_copy_refuses_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="Shape mismatch"):
        copy_mapped_weights(
            _OfficialNamedCas(8, 5), _Holder(ContextAwareSegmentation(8, 6)), authors_cas_key, ("cas.",)
        )


@pytest.mark.parametrize(
    ("name", "reduce_channels", "expected"),
    [
        ("r", False, "radius"),
        ("C", False, None),
        ("Descriptor.layer_1.weight", False, None),
        ("Descriptor.layer_2.conv.bias", False, "descriptor.coord_convs.1.conv.bias"),
        ("Descriptor.conv2.weight", False, None),
        ("Descriptor.conv2.weight", True, "descriptor.reducers.0.3.weight"),
        ("Descriptor.bn1_2.running_var", True, "descriptor.reducers.2.1.running_var"),
        ("Descriptor.bn3_1.weight", True, None),
    ],
)
def test_adaptor_key_map(name: str, reduce_channels: bool, expected: str | None) -> None:
    assert authors_adaptor_key(name, reduce_channels) == expected


def test_unknown_keys_fail_loudly() -> None:
    with pytest.raises(KeyError, match="new_head"):
        authors_cas_key("new_head.0.weight")
    with pytest.raises(KeyError, match=r"Descriptor\.extra"):
        authors_adaptor_key("Descriptor.extra.weight", False)


def test_compare_detects_a_perturbation_and_reports_it() -> None:
    reference = torch.linspace(-2.0, 2.0, 100)
    same = compare("same", reference.clone(), reference)
    assert same.passed
    assert same.max_abs == 0.0
    perturbed = reference.clone()
    perturbed[10] += 0.01
    different = compare("perturbed", perturbed, reference)
    assert not different.passed
    assert different.max_abs == pytest.approx(0.01, rel=1e-4)
    documented = compare("documented", perturbed, reference, deviation=True)
    assert documented.acceptable
    assert not documented.passed
    report = format_report([same, different, documented])
    assert "| perturbed |" in report
    assert "| NO |" in report
    assert "| deviation |" in report
    with pytest.raises(ValueError, match="shapes differ"):
        compare("shape", torch.zeros(3), torch.zeros(4))
