"""Chest-X-ray-pretrained ResNet-50 weights in their published layouts (nothing is downloaded).

Each layout is built the way its publisher builds it, from a torchvision ResNet-50 with random
weights: torchxrayvision's ``xrv.models.ResNet`` (one-channel conv1, 18-finding fc; saved as the
inner network's state dict, or as the wrapper's with ``model.`` keys and ``op_threshs``) and
RadImageNet's PyTorch ``Backbone`` (``nn.Sequential`` of the first nine children, ``backbone.N.``
keys). Every tensor must land in xraytriage's network unchanged.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from xraytriage.cli import main
from xraytriage.config import ModelConfig, PreprocessConfig, load_config
from xraytriage.models import build_model, pretrained
from xraytriage.models.pretrained import WeightsMismatch, WeightsUnavailable

TXV = pretrained.PUBLISHED["resnet50-res512-all"]
RIN = pretrained.PUBLISHED["radimagenet-resnet50"]


def randomised(model: nn.Module, seed: int) -> nn.Module:
    """Every parameter and buffer random (BN statistics too), so no default value can match by chance."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            else:
                tensor.fill_(7)
    return model.eval()


def txv_network(seed: int = 0) -> nn.Module:
    """What ``xrv.models.ResNet`` builds for resnet50 weights: one input channel, 18 findings."""
    net = torchvision.models.resnet50(weights=None, num_classes=18)
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return randomised(net, seed)


class TxvWrapper(nn.Module):
    """The state-dict shape of the ``xrv.models.ResNet`` module itself: ``model.`` and ``op_threshs``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.model = net
        self.register_buffer("op_threshs", torch.rand(18))


class RadImageNetBackbone(nn.Module):
    """RadImageNet's published PyTorch ``Backbone``: torchvision resnet50's first nine children."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.backbone = nn.Sequential(*list(net.children())[:9])


def body(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


@pytest.mark.parametrize("wrapped", [False, True])
def test_torchxrayvision_layout_round_trips_exactly(tmp_path: Path, wrapped: bool) -> None:
    net = txv_network()
    path = tmp_path / TXV.filename
    torch.save((TxvWrapper(net) if wrapped else net).state_dict(), path)
    reference = body(net.state_dict())
    model = build_model(ModelConfig(weights=str(path), in_channels=1), num_outputs=2).eval()
    loaded = model.state_dict()
    for key, tensor in reference.items():
        assert torch.equal(loaded[key], tensor), key
    assert model.fc[1].out_features == 2  # a fresh head, the 18-finding one dropped
    x = torch.rand(2, 1, 64, 64)
    features = nn.Sequential(*list(model.children())[:9])
    assert torch.equal(features(x), nn.Sequential(*list(net.children())[:9])(x))


def test_torchxrayvision_weights_on_a_three_channel_network_answer_grey_images_alike(tmp_path: Path) -> None:
    net = txv_network(seed=1)
    torch.save(net.state_dict(), tmp_path / "txv.pt")
    rgb = build_model(ModelConfig(weights=str(tmp_path / "txv.pt"), in_channels=3), 1).eval()
    assert torch.equal(rgb.conv1.weight, net.conv1.weight.expand(-1, 3, -1, -1) / 3)
    x = torch.rand(1, 1, 40, 40)
    assert torch.allclose(rgb.conv1(x.expand(-1, 3, -1, -1)), net.conv1(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("in_channels", [3, 1])
def test_radimagenet_layout_round_trips_exactly(tmp_path: Path, in_channels: int) -> None:
    net = randomised(torchvision.models.resnet50(weights=None), seed=2)
    published = RadImageNetBackbone(net).state_dict()
    assert "backbone.0.weight" in published and "backbone.7.2.bn3.running_var" in published
    path = tmp_path / "resnet50_torch.pt"
    torch.save(published, path)
    model = build_model(ModelConfig(weights=str(path), in_channels=in_channels), 1).eval()
    loaded = model.state_dict()
    for key, tensor in body(net.state_dict()).items():
        expected = tensor.sum(dim=1, keepdim=True) if key == "conv1.weight" and in_channels == 1 else tensor
        assert torch.equal(loaded[key], expected), key
    if in_channels == 3:
        x = torch.rand(2, 3, 64, 64)
        assert torch.equal(
            nn.Sequential(*list(model.children())[:9])(x), RadImageNetBackbone(net).backbone(x)
        )


def test_layouts_are_recognised_and_their_input_scaling_is_known(tmp_path: Path) -> None:
    txv, rin, plain = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"
    torch.save(TxvWrapper(txv_network()).state_dict(), txv)
    torch.save(RadImageNetBackbone(torchvision.models.resnet50(weights=None)).state_dict(), rin)
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), plain)
    assert pretrained.expected_input(str(txv)) is TXV
    assert pretrained.expected_input(str(rin)) is RIN
    assert pretrained.expected_input(str(plain)) is None
    assert pretrained.expected_input("IMAGENET1K_V2") is None and pretrained.expected_input(None) is None
    assert pretrained.expected_input("ResNet50-Res512-All") is TXV  # names are case-insensitive
    # torchxrayvision: 2 * (img / 255) - 1, times 1024; RadImageNet: (img - 127.5) * 2 / 255.
    for pixel in (0, 37, 255):
        x = pixel / 255
        assert (x - TXV.mean) / TXV.std == pytest.approx((2 * (pixel / 255) - 1) * 1024, abs=1e-9)
        assert (x - RIN.mean) / RIN.std == pytest.approx((pixel - 127.5) * 2 / 255, abs=1e-12)


def test_expected_input_is_adopted_unless_set_explicitly() -> None:
    pre = PreprocessConfig()
    notes = pretrained.adopt_expected_input(pre, TXV)
    assert (pre.mean, pre.std, pre.image_size) == (0.5, 1 / 2048, 512)
    assert len(notes) == 1 and "[-1024, 1024]" in notes[0]
    explicit = PreprocessConfig(image_size=256)
    notes = pretrained.adopt_expected_input(explicit, TXV)
    assert explicit.image_size == 256 and explicit.std == 1 / 2048
    assert any("preprocess.image_size=256 is set explicitly" in n and "512" in n for n in notes)


def test_the_training_bundle_carries_the_weights_input_scaling(tmp_path: Path) -> None:
    from xraytriage.data.synthetic import SyntheticSpec, generate_dataset
    from xraytriage.models import load_bundle
    from xraytriage.training.engine import train

    weights = tmp_path / TXV.filename
    torch.save(txv_network().state_dict(), weights)
    manifest = generate_dataset(
        tmp_path / "data", SyntheticSpec(n_patients=12, size=48, seed=5), progress=False
    )
    cfg = load_config(
        None,
        [
            f"data.manifest={manifest}",
            f"model.weights={weights}",
            "model.task=binary",
            "data.labels=[finding]",
            "data.num_workers=0",
            "preprocess.image_size=32",  # set explicitly: kept (512 px would be slow here)
            "train.epochs=1",
            "train.max_steps_per_epoch=1",
            "train.batch_size=4",
            "train.histogram_every_epochs=0",
            "evaluation.bootstrap_iterations=0",
        ],
    )
    train(cfg, tmp_path / "run")
    bundle = load_bundle(tmp_path / "run" / "model.pt")
    assert (bundle.preprocess.mean, bundle.preprocess.std, bundle.preprocess.image_size) == (
        0.5,
        1 / 2048,
        32,
    )
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.preprocess.std == 1 / 2048


def test_a_file_that_does_not_fit_is_refused_naming_the_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(WeightsMismatch) as err:
        build_model(ModelConfig(weights=str(path)), 1)
    text = str(err.value)
    assert "does not match resnet50" in text and str(path) in text
    assert "'layer1.0.conv1.weight' is [64, 64, 3, 3] in the file, [64, 64, 1, 1] in the network" in text
    assert "missing from the file" in text and "\n" not in text

    extra = body(txv_network().state_dict())
    extra["layer5.0.weight"] = torch.zeros(3)
    torch.save(extra, path)
    with pytest.raises(WeightsMismatch, match=r"1 unknown to the network \(e.g. 'layer5.0.weight'\)"):
        build_model(ModelConfig(weights=str(path)), 1)


def test_keras_style_files_are_refused_with_the_reason(tmp_path: Path) -> None:
    """RadImageNet's Keras .h5, and PyTorch ports of that Keras network (convolutions with biases)."""
    h5 = tmp_path / "RadImageNet-ResNet50_notop.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(WeightsMismatch, match="Keras HDF5"):
        build_model(ModelConfig(weights=str(h5)), 1)
    state = body(torchvision.models.resnet50(weights=None).state_dict())
    state["conv1.bias"] = torch.zeros(64)
    state["layer1.0.conv1.bias"] = torch.zeros(64)
    port = tmp_path / "port.pt"
    torch.save(state, port)
    with pytest.raises(WeightsMismatch, match="convolution biases"):
        build_model(ModelConfig(weights=str(port)), 1)


def test_a_pickled_whole_model_is_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "ResNet50.pt"
    torch.save(torchvision.models.resnet18(weights=None), path)
    with pytest.raises(WeightsMismatch, match=r"pickled Python objects.*state_dict"):
        build_model(ModelConfig(weights=str(path)), 1)


@pytest.fixture
def offline_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No cached weights anywhere, and every download fails as it does without internet."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    return tmp_path


def test_named_weights_offline_say_which_file_to_fetch_from_where(offline_home: Path) -> None:
    with pytest.raises(WeightsUnavailable) as err:
        build_model(ModelConfig(weights="resnet50-res512-all"), 1)
    assert TXV.url in str(err.value) and f"model.weights=/path/to/{TXV.filename}" in str(err.value)
    with pytest.raises(WeightsUnavailable) as err:
        build_model(ModelConfig(weights="radimagenet-resnet50"), 1)
    assert "github.com/BMEII-AI/RadImageNet" in str(err.value) and "model.weights=" in str(err.value)


def test_named_weights_are_found_where_torchxrayvision_or_torch_hub_keep_them(offline_home: Path) -> None:
    net = txv_network(seed=3)
    cache = offline_home / "home" / ".torchxrayvision" / "models_data"
    cache.mkdir(parents=True)
    torch.save(net.state_dict(), cache / TXV.filename)
    model = build_model(ModelConfig(weights="resnet50-res512-all"), 1)
    assert torch.equal(model.layer3[2].conv2.weight, net.layer3[2].conv2.weight)
    backbone = randomised(torchvision.models.resnet50(weights=None), seed=4)
    hub = offline_home / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(RadImageNetBackbone(backbone).state_dict(), hub / RIN.filename)
    model = build_model(ModelConfig(weights="radimagenet-resnet50", in_channels=3), 1)
    assert torch.equal(
        model.layer4[0].downsample[1].running_mean, backbone.layer4[0].downsample[1].running_mean
    )


def test_torchxrayvision_weights_download_through_torch_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    net, seen = txv_network(seed=6), {}

    def fake_download(url: str, **kwargs: object) -> dict:
        seen.update(kwargs, url=url)
        return net.state_dict()

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    model = build_model(ModelConfig(weights="resnet50-res512-all"), 1)
    assert seen["url"] == TXV.url and seen["file_name"] == TXV.filename and seen["weights_only"] is True
    assert torch.equal(model.conv1.weight, net.conv1.weight)


@pytest.mark.parametrize("weights", ["IMAGENET1K_V2", "resnet50-res512-all"])
def test_offline_weights_stop_training_with_one_line_and_exit_2(
    offline_home: Path, weights: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from xraytriage.data.synthetic import SyntheticSpec, generate_dataset

    manifest = generate_dataset(
        offline_home / "data", SyntheticSpec(n_patients=16, size=32, seed=1), progress=False
    )
    argv = ["train", "--config", str(Path(__file__).parents[2] / "configs" / "demo.yaml")]
    argv += ["--out", str(offline_home / "run"), f"data.manifest={manifest}", f"model.weights={weights}"]
    argv += ["model.arch=resnet50", "data.num_workers=0", "preprocess.image_size=32"]
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("xraytriage: config error: could not download")
    assert "model.weights=/path/to/" in lines[0]


def test_named_chest_xray_weights_need_resnet50(tmp_path: Path) -> None:
    from xraytriage.config import ConfigError

    with pytest.raises(ConfigError, match=r"is a ResNet-50: set model\.arch=resnet50"):
        load_config(None, ["model.arch=resnet18", "model.weights=resnet50-res512-all"])
