"""What runs the network's forward pass when scoring: PyTorch, or ONNX Runtime on the CPU.

Scoring on a CPU spends nearly all its time in the forward pass, and ONNX Runtime runs ResNet-50
1.3-1.6x faster there than PyTorch eager with BatchNorm folded (docs/benchmarks.md). So on a CPU
the default engine (``auto``) exports the bundle's network to ONNX in memory at start (about 1.5 s for
ResNet-50), checks its logits against PyTorch's on a sample batch, and scores with ONNX Runtime; if
the packages are missing or the check fails it says why and scores with PyTorch. On a GPU, and with
``--compile``, PyTorch runs it. Grad-CAM always uses the PyTorch network.

The exported graph is kept in a user cache (``$XRAYTRIAGE_CACHE_DIR``, else
``$XDG_CACHE_HOME/xraytriage`` or ``~/.cache/xraytriage``; ``XRAYTRIAGE_CACHE_DIR=off`` disables it),
keyed by the weights' hash, the input shape and the torch version, so a rerun skips the export. A
cached graph passes the same check as a fresh one; one that fails it is deleted and exported again.
The folder stays under ``CACHE_MAX_BYTES``, the least recently used graphs going first.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from xraytriage.scoring.crashes import worker_died
from xraytriage.utils.errors import TriageError, UsageError

log = logging.getLogger(__name__)

ENGINES = ("auto", "torch", "onnxruntime")
LOGITS_NAME = "logits"
FEATURES_NAME = "features"  # pooled penultimate features (the scope's OOD check), a second output
PARITY_ATOL = 1e-3  # logits; float32 kernels differ by ~1e-5 on ResNet-50
PARITY_RTOL = 1e-3
CACHE_ENV = "XRAYTRIAGE_CACHE_DIR"
# bump when the exported graph changes for the same weights and torch version (2: features output)
GRAPH_FORMAT = 2
CACHE_MAX_BYTES = 2 * 1024**3  # ~20 ResNet-50 graphs; the least recently used go first


class EngineUnavailable(TriageError, RuntimeError):
    """The requested engine cannot run this bundle here (missing package, export or parity failure)."""


@dataclass
class Runner:
    """The forward pass scoring calls, with the input layout it wants and a line for the summary.
    With ``features``, ``forward`` returns ``(logits, features)`` from one pass, else the logits."""

    forward: Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, torch.Tensor]]
    engine: str  # "torch" or "onnxruntime"
    channels_last: bool
    description: str
    features: bool = False


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """The bundle network on ``device``, eval mode, channels_last (cuDNN and oneDNN prefer NHWC)."""
    model = model.to(device).eval()
    model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: pick the fastest kernels once
    return model


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Inference copy with BatchNorm folded into the convolutions (eval only; logits equal to ~1e-5).

    About 1.2x on a 2-core CPU for ResNet-50; the original module stays for Grad-CAM. Architectures
    torch.fx cannot trace run unfused.
    """
    try:
        from torch.fx.experimental.optimization import fuse

        return fuse(copy.deepcopy(model))
    except Exception as exc:  # fx tracing is best-effort for arbitrary torchvision models
        log.debug("conv-bn folding skipped (%s: %s)", exc.__class__.__name__, exc)
        return model


class OnnxRuntimeForward:
    """Logits (and, for a graph with a second output, the features) from an ONNX graph of the
    network, run by ONNX Runtime's CPU provider.

    Spinning is off: an intra-op thread that busy-waits between kernels takes the core the decoding
    workers need, which costs more than the wake-up latency saves (scoring is not latency-bound).
    """

    def __init__(self, graph: bytes, threads: int, features: bool = False) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.threads = options.intra_op_num_threads
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.outputs = [LOGITS_NAME, FEATURES_NAME] if features else [LOGITS_NAME]

    def __call__(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        batch = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = [torch.from_numpy(a) for a in self.session.run(self.outputs, {self.input_name: batch})]
        return (out[0], out[1]) if len(out) == 2 else out[0]


def _importable(name: str) -> bool:
    if name in sys.modules:
        return sys.modules[name] is not None  # None: import blocked
    return importlib.util.find_spec(name) is not None


def graph_cache_dir() -> Path | None:
    """Where exported graphs are kept; None when the user turned the cache off."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "off", "0", "none") else Path(value) / "onnx"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "xraytriage" / "onnx"


def _graph_path(weights_id: str, in_channels: int, image_size: int, features: bool = False) -> Path | None:
    directory = graph_cache_dir()
    if directory is None or not weights_id.isalnum():  # the bundle's hex weights hash, nothing else
        return None
    from xraytriage.deploy.export import DEFAULT_OPSET

    key = "|".join(
        [weights_id, f"{in_channels}x{image_size}", torch.__version__, str(DEFAULT_OPSET), str(GRAPH_FORMAT)]
        + (["features"] if features else [])
    )
    return directory / f"{weights_id}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.onnx"


def _store(path: Path, graph: bytes) -> None:
    """Write-then-rename, without fsync (0.3 s for ResNet-50): a cache file lost or torn by a crash
    fails the agreement check and is exported again."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(graph)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only home or a full disk costs the next run an export, nothing more
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        log.info(
            "could not keep the ONNX graph in %s (%s); set %s to a writable folder",
            path.parent,
            exc,
            CACHE_ENV,
        )


def _evict(directory: Path, keep: Path, max_bytes: int) -> None:
    """Delete the least recently used graphs (mtime, refreshed on every hit) until the folder fits."""
    try:
        others = [(f.stat(), f) for f in directory.glob("*.onnx") if f != keep]
        total = sum(st.st_size for st, _ in others) + keep.stat().st_size
    except OSError:  # another process is changing the folder: a later run tidies up
        return
    for st, path in sorted(others, key=lambda entry: entry[0].st_mtime):
        if total <= max_bytes:
            break
        with contextlib.suppress(OSError):
            path.unlink()
            total -= st.st_size
            log.info(
                "removed the least recently used ONNX graph %s (cache over %d MiB)",
                path.name,
                max_bytes >> 20,
            )


def _checked_forward(
    model: nn.Module, graph: bytes, check: torch.Tensor, threads: int, features: bool = False
) -> OnnxRuntimeForward:
    """The runtime on ``graph``, if its logits (and features) agree with ``model``'s in PyTorch."""
    try:
        forward = OnnxRuntimeForward(graph, threads, features)
        got_all = forward(check)
    except Exception as exc:
        if worker_died(exc):  # a decoding process's death is never a reason to change engines
            raise
        raise EngineUnavailable(f"running the network in ONNX Runtime failed ({exc})") from exc
    with torch.no_grad():
        expected_all = model(check.contiguous(memory_format=torch.channels_last))
    pairs = list(zip(got_all, expected_all)) if features else [(got_all, expected_all)]
    for (got, expected), what in zip(pairs, ("logits", "features")):
        _check_agreement(got, expected.float(), what)
    return forward


def _check_agreement(got: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    if got.shape != expected.shape or not torch.allclose(got, expected, atol=PARITY_ATOL, rtol=PARITY_RTOL):
        diff = (got - expected).abs().max().item() if got.shape == expected.shape else float("nan")
        raise EngineUnavailable(
            f"ONNX Runtime's {what} differ from PyTorch's (shape {tuple(got.shape)} vs "
            f"{tuple(expected.shape)}, max difference {diff:.3g}; "
            f"allowed {PARITY_ATOL} + {PARITY_RTOL} x |value|)"
        )


def onnxruntime_forward(
    model: nn.Module,
    in_channels: int,
    image_size: int,
    threads: int,
    weights_id: str = "",
    features: bool = False,
) -> OnnxRuntimeForward:
    """Export ``model`` (eval, CPU) or take its cached graph, and check the runtime's logits against
    PyTorch's; raises :class:`EngineUnavailable` with the reason when it cannot be used.
    ``features``: the graph also returns the pooled features (:class:`LogitsAndFeatures`)."""
    if features:
        from xraytriage.models.features import LogitsAndFeatures

        model = LogitsAndFeatures(model).eval()
    return _onnxruntime_forward(model, in_channels, image_size, threads, weights_id, features)


def _onnxruntime_forward(
    model: nn.Module, in_channels: int, image_size: int, threads: int, weights_id: str, features: bool
) -> OnnxRuntimeForward:
    """The export-or-cache part of :func:`onnxruntime_forward`.
    ``weights_id``: the bundle's weights hash, the cache key ("" = no cache)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        missing = "onnxruntime"
    else:  # the exporter imports onnx (0.4 s), which a cached graph never needs: only look for it
        missing = "" if _importable("onnx") else "onnx"
    if missing:
        raise EngineUnavailable(
            f"the onnxruntime engine needs the onnx and onnxruntime packages ({missing} is missing): "
            "pip install onnx onnxruntime, or use --engine torch"
        )
    from xraytriage.deploy.export import onnx_graph

    gen = torch.Generator().manual_seed(0)
    example = torch.randn(2, in_channels, image_size, image_size, generator=gen)
    check = torch.randn(1, in_channels, image_size, image_size, generator=gen)  # another batch size
    cached = _graph_path(weights_id, in_channels, image_size, features)
    if cached is not None and cached.is_file():
        try:
            forward = _checked_forward(model, cached.read_bytes(), check, threads, features)
            with contextlib.suppress(OSError):
                os.utime(cached)  # recently used: last to be evicted
            return forward
        except (EngineUnavailable, OSError) as exc:
            log.warning("cached ONNX graph %s is unusable (%s); exporting it again", cached, exc)
            cached.unlink(missing_ok=True)
    try:
        names = [LOGITS_NAME, FEATURES_NAME] if features else [LOGITS_NAME]
        graph = onnx_graph(model, example, output_name=names)
    except Exception as exc:
        if worker_died(exc):
            raise
        raise EngineUnavailable(f"exporting the network to ONNX failed ({exc})") from exc
    forward = _checked_forward(model, graph, check, threads, features)
    if cached is not None:
        _store(cached, graph)
        _evict(cached.parent, cached, CACHE_MAX_BYTES)
    return forward


def check_engine(engine: str, device: torch.device, compile: bool = False) -> None:
    """The choices that can never work, refused before any output is opened or any export runs."""
    if engine not in ENGINES:
        raise UsageError(f"engine '{engine}': choose one of {', '.join(ENGINES)}")
    if engine == "onnxruntime" and device.type != "cpu":
        raise UsageError(
            f"--engine onnxruntime runs on the CPU, not on device {device}: add --device cpu, "
            "or use --engine torch"
        )
    if engine == "onnxruntime" and compile:
        raise UsageError("--compile applies to the torch engine: drop --compile or use --engine torch")


def select_runner(
    model: nn.Module,
    device: torch.device,
    engine: str = "auto",
    *,
    compile: bool = False,
    in_channels: int = 3,
    image_size: int = 224,
    weights_id: str = "",
    features: bool = False,
) -> Runner:
    """The forward pass for scoring ``model`` (already :func:`prepare_model`-d) on ``device``.

    ``auto``: ONNX Runtime on a CPU unless ``compile``, falling back to PyTorch with a warning;
    PyTorch on a GPU. ``onnxruntime`` asked for explicitly fails rather than falls back.
    ``weights_id`` (the bundle's ``model_id``) lets a rerun take the exported graph from the cache.
    """
    check_engine(engine, device, compile)
    if engine == "onnxruntime" or (engine == "auto" and device.type == "cpu" and not compile):
        threads = torch.get_num_threads()
        try:
            forward = onnxruntime_forward(model, in_channels, image_size, threads, weights_id, features)
        except EngineUnavailable as exc:
            if engine == "onnxruntime":
                raise
            log.warning("scoring with PyTorch instead of ONNX Runtime: %s", exc)
        else:
            description = f"onnxruntime (CPU, {forward.threads} threads)"
            return Runner(forward, "onnxruntime", False, description, features)
    if features:
        from xraytriage.models.features import LogitsAndFeatures

        model = LogitsAndFeatures(model).eval()
    net = fold_batchnorm(model) if device.type == "cpu" else model
    if compile:  # one static shape: short batches are padded (iter_logits), so it compiles once
        net = torch.compile(net, dynamic=False)
    where = f"CPU, {torch.get_num_threads()} threads" if device.type == "cpu" else str(device)
    return Runner(net, "torch", True, f"torch ({where}{', compiled' if compile else ''})")
