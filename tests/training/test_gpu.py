"""The CUDA path on a real GPU: bf16 training and bit-for-bit resume, fp16 loss scaling through an overflow,
torch.compile for training and scoring, channels_last, NCCL DDP, nvImageCodec decoding, GPU vs CPU scoring,
flat GPU memory.

Marked ``gpu`` and skipped without CUDA, so CI (no GPU) never depends on them; scripts/gpu_check.py
runs them on the device machine (``pytest -m gpu tests/training/test_gpu.py``). Between leases their
logic can be rehearsed on the CPU with ``XRAYTRIAGE_GPU_TESTS_ON=cpu pytest -m gpu
tests/training/test_gpu.py``: the tests that only mean something on CUDA (autocast dtypes, loss
scaling, NCCL, nvImageCodec, device memory) still skip.
"""

from __future__ import annotations

import csv
import math
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts: deterministic GEMMs

import numpy as np
import pytest
import torch

from support.training import tiny_config
from xraytriage.data.dataset import ScanBatch
from xraytriage.data.synthetic import SyntheticSpec, generate_dataset
from xraytriage.models.factory import head_parameters
from xraytriage.scoring import ScoreOptions, score
from xraytriage.training import engine
from xraytriage.training.checkpoint import CHECKPOINT_NAME, load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
DEVICE = os.environ.get("XRAYTRIAGE_GPU_TESTS_ON", "cuda")
ON_CUDA = DEVICE == "cuda" and torch.cuda.is_available()

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        DEVICE == "cuda" and not torch.cuda.is_available(),
        reason="needs a CUDA GPU (XRAYTRIAGE_GPU_TESTS_ON=cpu rehearses these tests on the CPU)",
    ),
]
needs_cuda = pytest.mark.skipif(not ON_CUDA, reason="only meaningful on a CUDA GPU")


@pytest.fixture(autouse=True)
def _restore_kernel_settings() -> Iterator[None]:
    """train.deterministic changes process-wide switches; give every test the defaults back."""
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(
        tmp_path_factory.mktemp("gpu-data"), SyntheticSpec(n_patients=32, size=96, seed=5), progress=False
    )


def gpu_config(manifest: Path, *extra: str):
    """test_training's tiny run (ResNet-18, batch 8, two epochs), at 64 px on the device under test.

    The fused augmentation backend: the device image has no albumentations (scripts/gpu_wheels.txt).
    """
    device = [f"train.device={DEVICE}", "preprocess.image_size=64", "train.histogram_every_epochs=0"]
    device.append("augment.backend=fast")
    return tiny_config(manifest, *device, *extra)


@pytest.fixture(scope="module")
def trained_bundle(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle trained a little on the GPU, so its probabilities spread over (0, 1) instead of sitting
    where a random network puts them."""
    run = tmp_path_factory.mktemp("gpu-run")
    engine.train(gpu_config(manifest, "train.epochs=3", "train.lr=0.003"), run)
    return run / "model.pt"


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / CHECKPOINT_NAME)["model"]


# ----------------------------------------------------------------------------- training


def test_bf16_training_lowers_the_loss_and_resumes_bit_for_bit(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = gpu_config(
        manifest, "train.amp=bf16", "train.deterministic=true", "train.epochs=3", "train.lr=0.003"
    )
    straight = engine.Trainer(cfg, tmp_path / "straight")
    result = straight.fit()
    if ON_CUDA:
        assert straight.device.type == "cuda" and straight.amp_dtype == torch.bfloat16
    losses = [h["train_loss"] for h in result.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses

    original = engine.Trainer._train_one_epoch

    def interrupt_third_epoch(self: engine.Trainer, epoch: int, partial: dict | None = None) -> dict:
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch, partial)

    monkeypatch.setattr(engine.Trainer, "_train_one_epoch", interrupt_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        engine.Trainer(cfg, tmp_path / "resumed").fit()
    monkeypatch.setattr(engine.Trainer, "_train_one_epoch", original)
    engine.Trainer(cfg, tmp_path / "resumed", resume=True).fit()
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ after resume, e.g. {different[:3]}"


class _Overflow(torch.autograd.Function):
    """Identity forward; the gradient becomes inf, as an fp16 overflow would make it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return torch.full_like(grad, float("inf"))


@needs_cuda
def test_fp16_loss_scaling_skips_an_injected_overflow_and_training_goes_on(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = gpu_config(manifest, "train.amp=fp16", "train.epochs=1", "train.max_steps_per_epoch=4")
    calls = []
    original_loss = engine.Trainer._loss

    def loss_with_overflow(self: engine.Trainer, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        calls.append(logits.requires_grad)
        if len(calls) == 2:  # the second training step
            logits = _Overflow.apply(logits)
        return original_loss(self, logits, targets)

    monkeypatch.setattr(engine.Trainer, "_loss", loss_with_overflow)
    trainer = engine.Trainer(cfg, tmp_path / "run")
    result = trainer.fit()
    assert trainer.amp_dtype == torch.float16 and calls[:4] == [True] * 4
    assert trainer.scaler.get_scale() == 2.0**15  # started at 2**16, halved once by the overflow
    head = next(iter(head_parameters(trainer.model)))
    assert float(trainer.optimizer.state[head]["step"]) == 3  # 4 steps, the overflowed one skipped
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert math.isfinite(result.history[0]["train_loss"])


def test_channels_last_is_kept_through_the_training_step(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = gpu_config(manifest, "train.epochs=1", "train.max_steps_per_epoch=2", "train.channels_last=true")
    seen: list[tuple[bool, bool]] = []
    original_model = engine.Trainer._model

    def model_with_probe(self: engine.Trainer) -> None:
        original_model(self)

        def probe(module: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
            seen.append((out.is_contiguous(memory_format=torch.channels_last), out.is_contiguous()))

        self.model.layer1.register_forward_hook(probe)

    monkeypatch.setattr(engine.Trainer, "_model", model_with_probe)
    trainer = engine.Trainer(cfg, tmp_path / "run")
    trainer.fit()
    assert len(seen) >= 2 and all(cl and not plain for cl, plain in seen), seen  # activations stay NHWC
    convs = [p for p in trainer.model.parameters() if p.dim() == 4 and p.shape[1] > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    for p in convs:  # AdamW's moments follow the parameters' layout
        assert trainer.optimizer.state[p]["exp_avg"].is_contiguous(memory_format=torch.channels_last)


def _one_step(trainer: engine.Trainer, batch: ScanBatch) -> tuple[float, dict[str, torch.Tensor]]:
    """Forward and backward of one batch through the trainer's network: the loss and every gradient."""
    trainer.net.train()
    trainer.optimizer.zero_grad(set_to_none=True)
    images = batch.image.to(trainer.device, memory_format=torch.channels_last)
    loss = trainer._loss(trainer.net(images), batch.target.to(trainer.device))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return float(loss), grads


def test_compiled_training_step_matches_eager(manifest: Path, tmp_path: Path) -> None:
    """One step from the same weights on the same batch: the loss within 1e-5, every gradient within 2 % of
    its norm (BatchNorm's backward sums over every pixel of the batch, and compiled kernels sum in another
    order: up to 0.4 % was seen on the CPU). Whole runs are not compared: training amplifies rounding
    differences of 1e-6 into 1e-3 within three steps, compiled or not."""
    import torch._dynamo

    common = ("train.amp=off", "model.dropout=0")  # inductor draws its own random numbers for dropout
    eager = engine.Trainer(gpu_config(manifest, *common), tmp_path / "eager")
    compiled = engine.Trainer(gpu_config(manifest, *common, "train.compile=true"), tmp_path / "compiled")
    for trainer in (eager, compiled):
        trainer._data()
        trainer._model()
    compiled.model.load_state_dict(eager.model.state_dict())
    batch = next(iter(eager.train_loader))
    torch._dynamo.reset()
    loss_e, grads_e = _one_step(eager, batch)
    loss_c, grads_c = _one_step(compiled, batch)
    torch._dynamo.reset()
    assert loss_c == pytest.approx(loss_e, rel=1e-5)
    assert grads_c.keys() == grads_e.keys() and len(grads_e) > 10
    for name, g in grads_e.items():
        error = float((grads_c[name] - g).norm())
        assert error <= 2e-2 * float(g.norm()) + 1e-7, (
            f"{name}: |compiled - eager| = {error}, |eager| = {g.norm()}"
        )


def test_compiled_training_compiles_once(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Epoch 1 compiles the training and the evaluation graphs; later epochs and the final validation
    reuse them: no recompilation per epoch or per batch."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    graphs_after_validation: list[int] = []
    original_validate = engine.Trainer._validate

    def counting_validate(self: engine.Trainer, epoch: int, *with_features):
        out = original_validate(self, epoch, *with_features)
        graphs_after_validation.append(counters["stats"]["unique_graphs"])
        return out

    monkeypatch.setattr(engine.Trainer, "_validate", counting_validate)
    cfg = gpu_config(manifest, "train.compile=true", "train.epochs=3")
    result = engine.Trainer(cfg, tmp_path / "run").fit()
    torch._dynamo.reset()
    assert graphs_after_validation[0] > 0
    assert graphs_after_validation == [graphs_after_validation[0]] * 4, graphs_after_validation
    assert all(math.isfinite(h["train_loss"]) for h in result.history)


def test_gpu_memory_does_not_grow_across_epochs(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not ON_CUDA:
        pytest.skip("device memory is a CUDA figure")
    allocated, peaks = [], []
    original_validate = engine.Trainer._validate

    def measuring_validate(self: engine.Trainer, epoch: int, *with_features):
        out = original_validate(self, epoch, *with_features)
        torch.cuda.synchronize()
        allocated.append(torch.cuda.memory_allocated())
        peaks.append(torch.cuda.max_memory_allocated())
        torch.cuda.reset_peak_memory_stats()
        return out

    monkeypatch.setattr(engine.Trainer, "_validate", measuring_validate)
    torch.cuda.reset_peak_memory_stats()
    engine.Trainer(gpu_config(manifest, "train.epochs=5"), tmp_path / "run").fit()
    mib = 2**20
    # Epoch 1 allocates the optimiser state; from epoch 2 on, what stays allocated and the peak are flat.
    assert allocated[4] - allocated[1] <= mib, [a / mib for a in allocated]
    assert peaks[4] - peaks[1] <= mib, [p / mib for p in peaks]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_single_process_ddp_run_trains_through_the_process_group(manifest: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "TMPDIR": str(tmp_path)}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1"]
    overrides = [
        f"data.manifest={manifest}",
        "data.num_workers=0",
        "model.arch=resnet18",
        "preprocess.image_size=64",
        "train.epochs=2",
        "train.batch_size=8",
        f"train.device={DEVICE}",
        "train.histogram_every_epochs=0",
        "augment.backend=fast",  # as gpu_config
    ]
    command = [*launcher, f"--master_port={_free_port()}", "-m", "xraytriage", "train"]
    proc = subprocess.run(
        [*command, "--config", "configs/demo.yaml", "--out", str(run), *overrides],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    backend = "nccl" if ON_CUDA else "gloo"
    assert f"DDP over {backend} with 1 rank(s)" in proc.stderr, proc.stderr[-2000:]
    assert (run / "model.pt").is_file() and (run / CHECKPOINT_NAME).is_file()


# ----------------------------------------------------------------------------- decoding


@needs_cuda
@pytest.mark.parametrize(
    ("name", "max_diff"),
    [("RG1_J2KR.dcm", 0), ("RG3_J2KR.dcm", 0), ("RG1_J2KI.dcm", 2), ("RG3_J2KI.dcm", 2)],
)
def test_nvimagecodec_decodes_the_radiographs_to_the_cpu_decoders_pixels(
    name: str, max_diff: int, pydicom_test_file
) -> None:
    """Lossless files: identical stored values. Lossy (irreversible 9/7 wavelet): the inverse transform is
    floating point in both decoders, so values may differ by rounding, at most 2 stored levels."""
    pytest.importorskip("nvidia.nvimgcodec")
    import pydicom
    from pydicom.encaps import get_frame

    from xraytriage.io import gpu

    assert gpu.unavailable_reason() is None
    ds = pydicom.dcmread(pydicom_test_file(name))
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    on_gpu = gpu.decode_frame(frame, int(ds.Rows), int(ds.Columns), int(ds.BitsStored))
    on_cpu = pydicom.pixels.pixel_array(ds)
    assert on_gpu.shape == on_cpu.shape and on_gpu.dtype == on_cpu.dtype
    diff = np.abs(on_gpu.astype(np.int64) - on_cpu.astype(np.int64))
    assert int(diff.max()) <= max_diff, f"max |GPU - CPU| = {int(diff.max())}, mean {float(diff.mean()):.4f}"


@needs_cuda
@pytest.mark.parametrize("name", ["RG1_J2KR.dcm", "RG3_J2KR.dcm"])
def test_gpu_decoded_scans_go_through_the_same_pipeline(name: str, pydicom_test_file) -> None:
    pytest.importorskip("nvidia.nvimgcodec")
    from xraytriage.config import PreprocessConfig
    from xraytriage.io import load_image

    path = pydicom_test_file(name)
    gpu_image, gpu_meta = load_image(path, PreprocessConfig(image_size=512, gpu_decode="auto"))
    cpu_image, cpu_meta = load_image(path, PreprocessConfig(image_size=512, reduce_jpeg2000=False))
    assert gpu_meta.decode_path == "nvimgcodec", gpu_meta.notes
    assert cpu_meta.decode_path != "nvimgcodec"
    np.testing.assert_allclose(gpu_image, cpu_image, atol=1e-6)


# ----------------------------------------------------------------------------- scoring


def _write_pngs(folder: Path, n: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        body = np.clip(rng.normal(120, 40, (80, 72)), 0, 255).astype(np.uint8)
        Image.fromarray(body).save(folder / f"scan{i:03d}.png")
    return folder


def _probabilities(path: Path) -> dict[str, float]:
    with path.open(newline="") as fh:
        return {row["path"]: float(row["prob_finding"]) for row in csv.DictReader(fh)}


def _score(bundle: Path, folder: Path, out: Path, device: str, **options) -> dict[str, float]:
    opts = ScoreOptions(
        model=bundle, input=folder, out=out, batch_size=4, workers=0, device=device, progress=False
    )
    for key, value in options.items():
        setattr(opts, key, value)
    summary = score(opts)
    assert summary.failed == 0 and summary.scored > 0, summary.text()
    return _probabilities(out)


def test_compiled_scoring_compiles_once_and_matches_eager(
    trained_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch._dynamo

    folder = _write_pngs(tmp_path / "in", 10)  # batch 4: the short last batch is padded, not recompiled
    eager = _score(trained_bundle, folder, tmp_path / "eager.csv", DEVICE, amp="off", engine="torch")
    torch._dynamo.reset()
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    compiled = _score(trained_bundle, folder, tmp_path / "compiled.csv", DEVICE, amp="off", compile=True)
    torch._dynamo.reset()
    assert compiled.keys() == eager.keys() and len(eager) == 10
    worst = max(abs(compiled[k] - eager[k]) for k in eager)
    assert worst <= 1e-3, f"compiled vs eager probabilities differ by up to {worst}"


@needs_cuda
def test_gpu_scoring_equals_cpu_scoring(trained_bundle: Path, tmp_path: Path) -> None:
    """fp32 on the GPU (TF32 convolutions, as cuDNN defaults) within 1e-3 of the CPU; the default bf16
    autocast within 1e-2 (bf16 keeps 8 bits of mantissa)."""
    folder = _write_pngs(tmp_path / "in", 12)
    cpu = _score(trained_bundle, folder, tmp_path / "cpu.csv", "cpu")
    spread = np.ptp(list(cpu.values()))
    assert spread > 0.01, f"the bundle's probabilities barely vary ({spread}); the comparison would be weak"
    fp32 = _score(trained_bundle, folder, tmp_path / "gpu32.csv", "cuda", amp="off")
    bf16 = _score(trained_bundle, folder, tmp_path / "gpu16.csv", "cuda")
    assert fp32.keys() == cpu.keys() == bf16.keys()
    worst32 = max(abs(fp32[k] - cpu[k]) for k in cpu)
    worst16 = max(abs(bf16[k] - cpu[k]) for k in cpu)
    assert worst32 <= 1e-3, f"GPU fp32 vs CPU: up to {worst32}"
    assert worst16 <= 1e-2, f"GPU bf16 vs CPU: up to {worst16}"
