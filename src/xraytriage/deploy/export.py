"""Export a model bundle to ONNX or TorchScript, with its preprocessing metadata and a parity check.

The exported graph takes the normalised tensor that :func:`xraytriage.data.tensors.image_to_tensor`
produces (batch, in_channels, image_size, image_size; dynamic batch axis) and returns per-class
*probabilities* (sigmoid, or softmax for multiclass, after dividing the logits by the bundle's
calibration temperatures, one per label), so a serving stack compares them directly with the stored
thresholds.
Everything a server needs to reproduce the decoding (labels, thresholds, preprocess settings, task,
temperatures, model id) is embedded in the file and also written beside it as ``FILE.json``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xraytriage.models.bundle import Bundle, load_bundle, logits_to_probabilities
from xraytriage.utils.atomic import atomic_path, atomic_write_text

FORMATS = ("onnx", "torchscript")
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
EXTRA_FILE = "xraytriage.json"  # TorchScript _extra_files entry
METADATA_SCHEMA = "xraytriage.export/1"
DEFAULT_OPSET = 17


@contextmanager
def _quiet_deprecations() -> Iterator[None]:
    """torch marks TorchScript and its ONNX exporter deprecated; they still work and are what we use."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


class ExportError(RuntimeError):
    """The export could not be written, or its outputs do not match PyTorch's."""


class ProbabilityModel(nn.Module):
    """Bundle network + temperatures + sigmoid/softmax, so the artefact outputs probabilities."""

    def __init__(self, model: nn.Module, task: str, temperature: list[float]) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.register_buffer("temperature", torch.tensor(temperature, dtype=torch.float32))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return logits_to_probabilities(self.model(image), self.task, self.temperature)


@dataclass
class ParityResult:
    batch_sizes: list[int]
    max_abs_diff: float
    atol: float
    rtol: float
    ok: bool


@dataclass
class ExportResult:
    path: Path
    metadata_path: Path
    format: str
    metadata: dict[str, Any]
    parity: ParityResult | None


def export_metadata(bundle: Bundle, fmt: str, opset: int | None = None) -> dict[str, Any]:
    """What a server needs besides the graph: how to build the input and how to read the output."""
    size = bundle.preprocess.image_size
    return {
        "schema": METADATA_SCHEMA,
        "format": fmt,
        "model_id": bundle.model_id,
        "task": bundle.task,
        "labels": list(bundle.labels),
        "thresholds": {k: float(v) for k, v in bundle.thresholds.items()},
        "temperatures": {k: float(v) for k, v in bundle.temperatures.items()},
        "preprocess": bundle.preprocess.model_dump(mode="json"),
        "arch": bundle.model_config.arch,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", bundle.model_config.in_channels, size, size],
            "dtype": "float32",
            "note": "image in [0,1] after decoding/resizing, then (x - preprocess.mean) / preprocess.std",
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", len(bundle.labels) if bundle.task != "binary" else 1],
            "meaning": "softmax(logits / temperature)"
            if bundle.task == "multiclass"
            else "sigmoid(logits / temperature of the label)",
        },
        **({"opset": opset} if opset is not None else {}),
    }


def _example(bundle: Bundle, batch: int, seed: int = 0) -> torch.Tensor:
    size = bundle.preprocess.image_size
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, bundle.model_config.in_channels, size, size, generator=gen)


def onnx_graph(
    module: nn.Module,
    example: torch.Tensor,
    opset: int = DEFAULT_OPSET,
    output_name: str | Sequence[str] = OUTPUT_NAME,
) -> bytes:
    """``module`` as a serialized ONNX graph with a dynamic batch axis (also the CPU scoring engine's
    graph, see :mod:`xraytriage.scoring.engine`). ``output_name``: one name, or one per output of a
    module returning a tuple. Needs the onnx package."""
    names = [output_name] if isinstance(output_name, str) else list(output_name)
    import io

    buffer = io.BytesIO()
    with _quiet_deprecations(), torch.no_grad():
        # The legacy TorchScript-based exporter (dynamo=False): the dynamo exporter needs the extra
        # onnxscript package and gives nothing these plain CNNs need.
        torch.onnx.export(
            module,
            (example,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_axes={INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in names}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return buffer.getvalue()


def _export_onnx(
    wrapped: nn.Module, example: torch.Tensor, out: Path, meta: dict[str, Any], opset: int
) -> None:
    import onnx

    proto = onnx.load_from_string(onnx_graph(wrapped, example, opset))
    onnx.checker.check_model(proto)
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    proto.producer_name = "xraytriage"
    with atomic_path(out) as tmp:
        onnx.save(proto, str(tmp))


def _export_torchscript(wrapped: nn.Module, example: torch.Tensor, out: Path, meta: dict[str, Any]) -> None:
    with torch.no_grad(), _quiet_deprecations():
        traced = torch.jit.trace(wrapped, (example,), check_trace=False)
        traced = torch.jit.freeze(traced.eval())
    with atomic_path(out) as tmp, _quiet_deprecations():
        torch.jit.save(traced, str(tmp), _extra_files={EXTRA_FILE: json.dumps(meta)})


def read_export_metadata(path: str | Path) -> dict[str, Any]:
    """The embedded metadata of an exported file (ONNX metadata_props or TorchScript extra file)."""
    p = Path(path)
    if p.suffix == ".onnx" or _looks_onnx(p):
        import onnx

        proto = onnx.load(str(p), load_external_data=False)
        meta: dict[str, Any] = {}
        for entry in proto.metadata_props:
            try:
                meta[entry.key] = json.loads(entry.value)
            except json.JSONDecodeError:
                meta[entry.key] = entry.value
        return meta
    extra = {EXTRA_FILE: ""}
    with _quiet_deprecations():
        torch.jit.load(str(p), map_location="cpu", _extra_files=extra)
    return json.loads(extra[EXTRA_FILE])


def _looks_onnx(path: Path) -> bool:
    import zipfile

    return not zipfile.is_zipfile(path)


def run_exported(path: str | Path, fmt: str, batch: np.ndarray) -> np.ndarray:
    """Probabilities from the exported file alone (ONNX Runtime on CPU, or the TorchScript loader)."""
    if fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: batch.astype(np.float32)})[0])
    with _quiet_deprecations():
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(torch.from_numpy(batch.astype(np.float32))).numpy()


def check_parity(
    bundle: Bundle,
    path: str | Path,
    fmt: str,
    batch_sizes: tuple[int, ...] = (1, 3),
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> ParityResult:
    """Run the exported file and the PyTorch bundle on the same batches; several sizes prove the
    dynamic batch axis."""
    worst = 0.0
    ok = True
    model = bundle.model.eval()
    for i, n in enumerate(batch_sizes):
        x = _example(bundle, n, seed=100 + i)
        with torch.no_grad():
            expected = bundle.probabilities(model(x)).numpy()
        got = run_exported(path, fmt, x.numpy())
        if got.shape != expected.shape:
            raise ExportError(
                f"{path}: output shape {got.shape} for batch {n}, PyTorch gives {expected.shape}"
            )
        worst = max(worst, float(np.max(np.abs(got - expected))) if got.size else 0.0)
        ok = ok and bool(np.allclose(got, expected, atol=atol, rtol=rtol))
    return ParityResult(list(batch_sizes), worst, atol, rtol, ok)


def export_bundle(
    bundle_path: str | Path,
    fmt: str,
    out: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    batch_sizes: tuple[int, ...] = (1, 3),
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> ExportResult:
    """Write ``out`` (the graph) and ``out.json`` (its metadata); check parity with PyTorch."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format '{fmt}': choose one of {', '.join(FORMATS)}")
    if fmt == "onnx" and opset < 17:
        raise ValueError(f"--opset {opset}: xraytriage exports need ONNX opset 17 or newer")
    bundle = load_bundle(bundle_path)
    bundle.model.eval()
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    meta = export_metadata(bundle, fmt, opset if fmt == "onnx" else None)
    wrapped = ProbabilityModel(bundle.model, bundle.task, bundle.temperature_vector()).eval()
    example = _example(bundle, 2)
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ExportError(
                "ONNX export needs the onnx and onnxruntime packages: pip install onnx onnxruntime"
            ) from None
        _export_onnx(wrapped, example, out_path, meta, opset)
    else:
        _export_torchscript(wrapped, example, out_path, meta)
    meta_path = out_path.with_name(out_path.name + ".json")
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    parity = check_parity(bundle, out_path, fmt, batch_sizes, atol, rtol) if check else None
    return ExportResult(out_path, meta_path, fmt, meta, parity)
