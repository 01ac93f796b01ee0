"""Model construction, pretrained-weight handling and the single-file bundle."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from xraytriage.config import ModelConfig, PreprocessConfig
from xraytriage.models import build_model, load_bundle, save_bundle
from xraytriage.models.factory import WeightsUnavailable


def test_resnet50_default_is_single_channel_with_new_head() -> None:
    model = build_model(ModelConfig(weights=None), num_outputs=3).eval()
    assert model.conv1.in_channels == 1
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 3)
    assert isinstance(model.fc[0], torch.nn.Dropout)


def test_local_weights_are_loaded_and_conv1_folded(tmp_path: Path) -> None:
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    grey = build_model(ModelConfig(arch="resnet18", weights=str(path), in_channels=1), 1).eval()
    rgb = build_model(ModelConfig(arch="resnet18", weights=str(path), in_channels=3), 1).eval()
    assert torch.equal(grey.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
    assert torch.allclose(grey.conv1.weight, reference.conv1.weight.sum(1, keepdim=True))
    x = torch.rand(2, 1, 48, 48)
    # Folding conv1 is exact: a grey image through 1 channel == the same image copied to RGB.
    assert torch.allclose(grey.conv1(x), rgb.conv1(x.expand(-1, 3, -1, -1)), atol=1e-5)


def test_mismatched_local_weights_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "wrong.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="does not match resnet50"):
        build_model(ModelConfig(arch="resnet50", weights=str(path)), 1)


def test_offline_imagenet_weights_fail_with_instructions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailable) as err:
        build_model(ModelConfig(arch="resnet50", weights="IMAGENET1K_V2"), 1)
    text = str(err.value)
    assert "resnet50-11ad3fa6.pth" in text and "model.weights=" in text


def test_imagenet_weights_use_torchvision_download_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Online path: torchvision's own URL and hash check; the download itself is faked."""
    reference = torchvision.models.resnet18(weights=None).state_dict()
    seen = {}

    def fake_download(url: str, **kwargs: object) -> dict:
        seen["url"], seen["check_hash"] = url, kwargs.get("check_hash")
        return reference

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", fake_download)
    model = build_model(ModelConfig(arch="resnet18", weights="IMAGENET1K_V1", in_channels=3), 2)
    assert seen["url"] == torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url and seen["check_hash"]
    assert torch.equal(model.layer4[1].conv2.weight, reference["layer4.1.conv2.weight"])


def test_bundle_round_trip(tmp_path: Path) -> None:
    cfg = ModelConfig(arch="resnet18", weights=None, task="multilabel")
    model = build_model(cfg, 2).eval()
    pre = PreprocessConfig(image_size=64, normalization="percentile")
    path = tmp_path / "model.pt"
    model_id = save_bundle(
        path, model, cfg, pre, ["a", "b"], {"a": 0.3, "b": 0.7}, "multilabel", metadata={"best_epoch": 3}
    )
    bundle = load_bundle(path)
    assert bundle.labels == ["a", "b"] and bundle.thresholds == {"a": 0.3, "b": 0.7}
    assert bundle.preprocess == pre and bundle.model_id == model_id and bundle.metadata["best_epoch"] == 3
    x = torch.rand(2, 1, 64, 64)
    assert torch.allclose(bundle.model(x), model(x))
    # weights_only loading: the file holds only tensors and plain containers.
    torch.load(path, weights_only=True)
    assert save_bundle(tmp_path / "again.pt", model, cfg, pre, ["a", "b"], {}, "multilabel") == model_id


@pytest.mark.parametrize("arch", ["resnet50", "densenet121", "efficientnet_b0", "swin_t"])
def test_loaded_bundle_is_the_saved_network_with_real_trainable_tensors(tmp_path: Path, arch: str) -> None:
    cfg = ModelConfig(arch=arch, weights=None, task="binary")
    torch.manual_seed(0)
    model = build_model(cfg, 1).eval()
    save_bundle(tmp_path / "m.pt", model, cfg, PreprocessConfig(image_size=64), ["x"], {}, "binary")
    loaded = load_bundle(tmp_path / "m.pt").model
    tensors = [*loaded.parameters(), *loaded.buffers()]
    assert not loaded.training and not any(t.is_meta for t in tensors)  # built on meta, then given weights
    assert all(p.requires_grad for p in loaded.parameters())  # fine-tuning and Grad-CAM need autograd
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_state_the_bundle_does_not_hold_is_built_normally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import xraytriage.models.bundle as bundle_mod

    cfg = ModelConfig(arch="resnet18", weights=None, task="binary")
    model = build_model(cfg, 1).eval()
    save_bundle(tmp_path / "m.pt", model, cfg, PreprocessConfig(image_size=32), ["x"], {}, "binary")
    real_build = bundle_mod.build_model

    def with_unsaved_buffer(*args: object, **kwargs: object) -> torch.nn.Module:
        built = real_build(*args, **kwargs)
        built.register_buffer("scale", torch.full((1,), 2.0), persistent=False)  # not in any state_dict
        return built

    monkeypatch.setattr(bundle_mod, "build_model", with_unsaved_buffer)
    loaded = load_bundle(tmp_path / "m.pt").model
    assert loaded.scale.device.type == "cpu" and loaded.scale.item() == 2.0
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_bad_bundle_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a bundle")
    with pytest.raises(ValueError, match="not a readable xraytriage model bundle"):
        load_bundle(bad)
    with pytest.raises(FileNotFoundError, match="model bundle not found"):
        load_bundle(tmp_path / "missing.pt")


@pytest.mark.parametrize(
    "arch", ["resnet18", "densenet121", "efficientnet_b0", "mobilenet_v3_small", "convnext_tiny"]
)
def test_any_torchvision_classifier_by_name(arch: str) -> None:
    model = build_model(ModelConfig(arch=arch, weights=None, in_channels=1), num_outputs=4).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 4)


def test_unknown_arch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not a torchvision classification model"):
        build_model(ModelConfig(arch="resnet5000", weights=None), 1)


def test_bundle_written_before_a_preprocess_key_existed_keeps_its_pixels(tmp_path: Path) -> None:
    """A new default (JPEG 2000 level tolerance) must not change what an older model is fed."""
    cfg = ModelConfig(arch="resnet18")
    model = build_model(cfg, 1, load_weights=False)
    path = tmp_path / "old.pt"
    save_bundle(path, model, cfg, PreprocessConfig(image_size=64), ["finding"], {"finding": 0.5}, "binary")
    payload = torch.load(path, weights_only=True)
    del payload["preprocess"]["jpeg2000_min_fraction"]
    torch.save(payload, path)
    assert load_bundle(path).preprocess.jpeg2000_min_fraction == 1.0
    assert PreprocessConfig().jpeg2000_min_fraction < 1.0  # new bundles take the faster default...
    fresh = tmp_path / "new.pt"
    save_bundle(fresh, model, cfg, PreprocessConfig(image_size=64), ["finding"], {"finding": 0.5}, "binary")
    assert load_bundle(fresh).preprocess.jpeg2000_min_fraction == PreprocessConfig().jpeg2000_min_fraction
