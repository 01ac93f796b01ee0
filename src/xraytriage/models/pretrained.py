"""Chest-X-ray-pretrained ResNet-50 weights, read in their published layouts and mapped onto torchvision.

``model.weights`` takes, besides torchvision's ImageNet names and plain state-dict files:

* ``resnet50-res512-all`` - torchxrayvision's ResNet-50 (PadChest, NIH, RSNA, SIIM, VinDr; 512 px).
  Published as a plain torchvision ``resnet50`` state dict with a one-channel ``conv1`` and an
  18-finding ``fc``; ``xrv.models.ResNet(...).state_dict()`` holds the same under ``model.`` plus an
  ``op_threshs`` buffer. Input: one channel, 512 px, intensities scaled to [-1024, 1024].
* ``radimagenet-resnet50`` - RadImageNet's ResNet-50 in its PyTorch release: the official example's
  ``Backbone`` (``nn.Sequential`` of torchvision ``resnet50``'s first nine children), keys
  ``backbone.<index>.``, no head. Input: three channels, 224 px, intensities scaled to [-1, 1].

Either is accepted by name (looked up locally, torchxrayvision's also downloaded) or as a file in its
published layout, recognised by its keys. The network is always torchvision's ResNet-50; the source's
input scaling is carried into the run's preprocessing (:func:`adopt_expected_input`) and so into the
bundle. Where each file comes from and its licence: docs/pretrained.md.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from xraytriage.config import CXR_WEIGHT_NAMES, ConfigError, PreprocessConfig

TORCHVISION = "torchvision"
TORCHXRAYVISION = "torchxrayvision"
RADIMAGENET = "radimagenet"

# RadImageNet's Backbone is nn.Sequential(*list(resnet50().children())[:9]): the positions of the
# children that hold parameters (2 = relu, 3 = maxpool, 8 = avgpool hold none).
_RADIMAGENET_CHILDREN = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
_TXV_FINDINGS = 18
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class WeightsUnavailable(ConfigError):
    """Named pretrained weights could not be fetched (offline); the message says which file to get where."""


class WeightsMismatch(ConfigError):
    """A weights file whose layout, keys or shapes do not fit the network; the message names the mismatch."""


@dataclass(frozen=True)
class PublishedWeights:
    """One published set of chest-X-ray-pretrained weights and the input it was trained on."""

    name: str  # the model.weights value
    layout: str
    filename: str  # the file as published (or, without a stable link, the name it is looked up under)
    url: str | None  # direct download; None when it must be fetched by hand
    where: str  # where a person fetches it
    mean: float  # input scaling on xraytriage's [0, 1] images: (x - mean) / std
    std: float
    image_size: int
    scaling: str  # the source's own description of its input

    def local_candidates(self) -> list[Path]:
        """Where a fetched file is looked for: torch hub's checkpoint folder, then torchxrayvision's cache."""
        found = [Path(torch.hub.get_dir()) / "checkpoints" / self.filename]
        if self.layout == TORCHXRAYVISION:
            found.append(Path(os.path.expanduser("~/.torchxrayvision/models_data")) / self.filename)
        return found


PUBLISHED = {
    entry.name: entry
    for entry in (
        PublishedWeights(
            name="resnet50-res512-all",
            layout=TORCHXRAYVISION,
            filename="pc-nih-rsna-siim-vin-resnet50-test512-e400-state.pt",
            url="https://github.com/mlmed/torchxrayvision/releases/download/v1/"
            "pc-nih-rsna-siim-vin-resnet50-test512-e400-state.pt",
            where="torchxrayvision's GitHub release v1",
            mean=0.5,
            std=1.0 / 2048.0,
            image_size=512,
            scaling="torchxrayvision's [-1024, 1024] (xrv.datasets.normalize(img, 255)), one channel, 512 px",
        ),
        PublishedWeights(
            name="radimagenet-resnet50",
            layout=RADIMAGENET,
            filename="radimagenet-resnet50.pt",
            url=None,
            where="the RadImageNet Google Drive folder linked from https://github.com/BMEII-AI/RadImageNet "
            "(its PyTorch ResNet-50 backbone: the state dict pytorch_example.ipynb loads as "
            "resnet50_torch.pt)",
            mean=0.5,
            std=0.5,
            image_size=224,
            scaling="RadImageNet's [-1, 1] ((pixel - 127.5) * 2 / 255), three channels, 224 px",
        ),
    )
}
_BY_LAYOUT = {entry.layout: entry for entry in PUBLISHED.values()}
assert set(PUBLISHED) == set(CXR_WEIGHT_NAMES), "config.CXR_WEIGHT_NAMES must list PUBLISHED"


def published(name: str | None) -> PublishedWeights | None:
    """The registered weights called ``name`` (case-insensitive), or None."""
    return PUBLISHED.get(name.strip().lower()) if name else None


# ------------------------------------------------------------------------------------------ reading
def read_weights_file(path: str | Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """A state dict from a file, only ever with ``weights_only=True``; unwraps ``{"state_dict": ...}``."""
    p = Path(path)
    with open(p, "rb") as fh:
        head = fh.read(8)
    if head == _HDF5_SIGNATURE:
        raise WeightsMismatch(
            f"model.weights {p} is a Keras HDF5 file: Keras's ResNet-50 is a different network from "
            "torchvision's (the stride sits in each stage's first 1x1 convolution and every convolution "
            "has a bias), so it cannot be loaded; use RadImageNet's PyTorch release (docs/pretrained.md)"
        )
    try:
        loaded = torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
    except RuntimeError as exc:
        if mmap and "mmap" in str(exc):  # an old-format (pre-zip) file: read it whole
            return read_weights_file(p, mmap=False)
        raise WeightsMismatch(f"model.weights {p}: not a PyTorch weights file ({_one_line(exc)})") from None
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise WeightsMismatch(
                f"model.weights {p}: not a PyTorch weights file ({_one_line(exc)})"
            ) from None
        raise WeightsMismatch(
            f"model.weights {p} holds pickled Python objects (e.g. a whole model saved with "
            "torch.save(model)), which are never unpickled here; where you trust the file, convert it "
            "once: torch.save(torch.load(FILE, weights_only=False).state_dict(), 'state.pt')"
        ) from None
    except Exception as exc:  # garbage fails in many ways (KeyError, EOFError, ...)
        raise WeightsMismatch(f"model.weights {p}: not a PyTorch weights file ({_one_line(exc)})") from None
    return as_state_dict(loaded, str(p))


def as_state_dict(loaded: object, source: str) -> dict[str, torch.Tensor]:
    """``names -> tensors`` out of what ``torch.load`` returned (DDP's ``module.`` prefix removed)."""
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise WeightsMismatch(f"model.weights {source} does not hold a state dict (names -> tensors)")
    return {str(k).removeprefix("module."): v for k, v in loaded.items()}


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{exc.__class__.__name__}: {exc}".split())[:300]


def detect_layout(state: dict[str, torch.Tensor]) -> str:
    """Which published layout a state dict is in (``torchvision`` when it is none of the others)."""
    if "backbone.0.weight" in state:
        return RADIMAGENET
    if "model.conv1.weight" in state or "op_threshs" in state:
        return TORCHXRAYVISION
    conv1, fc = state.get("conv1.weight"), state.get("fc.weight")
    if conv1 is not None and fc is not None and conv1.shape[1] == 1 and fc.shape[0] == _TXV_FINDINGS:
        return TORCHXRAYVISION
    return TORCHVISION


def to_torchvision(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The same tensors under torchvision ResNet's key names (the tensors themselves are not copied)."""
    if "conv1.bias" in state or "layer1.0.conv1.bias" in state or "backbone.0.bias" in state:
        raise WeightsMismatch(
            f"model.weights {source} has convolution biases (e.g. 'conv1.bias'): it is a Keras-style "
            "ResNet-50 (such as the Keras-to-PyTorch port of RadImageNet), a different network from "
            "torchvision's (stride in each stage's first 1x1 convolution); use RadImageNet's PyTorch "
            "release (docs/pretrained.md)"
        )
    layout = detect_layout(state)
    if layout == RADIMAGENET:
        return {_radimagenet_key(k): v for k, v in state.items()}
    if layout == TORCHXRAYVISION:
        return {k.removeprefix("model."): v for k, v in state.items() if k != "op_threshs"}
    return dict(state)


def _radimagenet_key(key: str) -> str:
    prefix, index, rest = [*key.split(".", 2), "", ""][:3]
    if prefix == "backbone" and index in _RADIMAGENET_CHILDREN and rest:
        return f"{_RADIMAGENET_CHILDREN[index]}.{rest}"
    return key  # reported as a key the network does not have


# ------------------------------------------------------------------------------------------ by name
def load_published(entry: PublishedWeights) -> dict[str, torch.Tensor]:
    """The named weights from a local copy, else downloaded when they have a direct link."""
    for candidate in entry.local_candidates():
        if candidate.is_file():
            return to_torchvision(read_weights_file(candidate), str(candidate))
    if entry.url is None:
        raise WeightsUnavailable(
            f"{entry.name} weights not found locally ({', '.join(map(str, entry.local_candidates()))}); "
            f"fetch them from {entry.where}, then set model.weights=/path/to/the/file or save it as "
            f"{entry.local_candidates()[0]}"
        )
    from xraytriage.utils.progress import show_progress

    try:
        state = torch.hub.load_state_dict_from_url(
            entry.url,
            map_location="cpu",
            progress=show_progress(),
            check_hash=False,  # the publisher gives no hash; the file is read with weights_only=True
            file_name=entry.filename,
            weights_only=True,
        )
    except Exception as exc:  # URLError, socket, SSL, HTTP errors...
        raise WeightsUnavailable(
            f"could not download {entry.name} weights ({_one_line(exc)}). If this machine is offline, fetch "
            f"{entry.url} elsewhere, copy it here and set model.weights=/path/to/{entry.filename} (or put "
            f"it in {entry.local_candidates()[0]})"
        ) from None
    return to_torchvision(as_state_dict(state, entry.url), entry.name)


def expected_input(weights: str | None) -> PublishedWeights | None:
    """The published weights ``model.weights`` names or whose layout its file is in, for their input."""
    if not weights:
        return None
    entry = published(weights)
    if entry is not None:
        return entry
    path = Path(weights)
    if not path.is_file():  # torchvision's names
        return None
    return _BY_LAYOUT.get(detect_layout(read_weights_file(path, mmap=True)))


def adopt_expected_input(preprocess: PreprocessConfig, entry: PublishedWeights) -> list[str]:
    """Give ``preprocess`` the input the weights were trained on, except what the config set itself.

    Returns one line per decision for the log: the bundle then carries this preprocessing, so
    evaluation and scoring feed the network what it was trained on.
    """
    notes = []
    for key, value in (("mean", entry.mean), ("std", entry.std), ("image_size", entry.image_size)):
        current = getattr(preprocess, key)
        if key not in preprocess.model_fields_set:
            setattr(preprocess, key, value)
        elif current != value:
            notes.append(
                f"preprocess.{key}={current} is set explicitly; {entry.name} was trained with {value}"
            )
    notes.insert(
        0,
        f"model.weights {entry.name}: input as trained, {entry.scaling} "
        f"(preprocess.mean={preprocess.mean:g}, std={preprocess.std:g}, image_size={preprocess.image_size})",
    )
    return notes


# ------------------------------------------------------------------------------------------ loading
def _first_conv_key(model: nn.Module) -> str | None:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return f"{name}.weight"
    return None


def _match_input_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """First-layer kernels for ``channels`` inputs: summed to one (exact for grey images, as folding
    conv1 does), or one spread evenly over three (the same response to a grey image)."""
    if weight.shape[1] == channels:
        return weight
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    if weight.shape[1] == 1:
        return weight.expand(-1, channels, -1, -1) / channels
    return weight


def load_backbone(
    model: nn.Module, state: dict[str, torch.Tensor], *, arch: str, head: str, source: str
) -> None:
    """Load every non-head tensor of ``state`` into ``model``; refuse, naming them, any missing,
    unexpected or mis-shaped key. Tensors under the ``head`` attribute load where they fit (the final
    linear layer is replaced afterwards anyway)."""
    own = model.state_dict()
    state = dict(state)
    first = _first_conv_key(model)
    if first in state and first in own:
        state[first] = _match_input_channels(state[first], own[first].shape[1])
    body = {k for k in own if not k.startswith(f"{head}.")}
    missing = [k for k in own if k in body and k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own and not k.startswith(f"{head}.")]
    misshaped = [k for k in state if k in body and state[k].shape != own[k].shape]
    problems = []
    if misshaped:
        k = misshaped[0]
        problems.append(
            f"{len(misshaped)} mis-shaped (e.g. '{k}' is {list(state[k].shape)} in the file, "
            f"{list(own[k].shape)} in the network)"
        )
    if missing:
        problems.append(f"{len(missing)} missing from the file (e.g. {_some(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unknown to the network (e.g. {_some(unexpected)})")
    if problems:
        raise WeightsMismatch(f"model.weights {source} does not match {arch}: {'; '.join(problems)}")
    model.load_state_dict(
        {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}, strict=False
    )


def _some(keys: list[str]) -> str:
    return ", ".join(repr(k) for k in keys[:3])
