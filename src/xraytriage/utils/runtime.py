"""Device, precision and seeding choices shared by training and scoring."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from xraytriage.utils.errors import DeviceUnavailable


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(
            f"device '{name}' requested but CUDA is not available; use device=cpu or auto"
        )
    return device


def resolve_amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU supports it, fp16 (with a grad scaler) otherwise; None = full precision."""
    if amp == "off" or device.type != "cuda":
        return None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def worker_start_method(gpu_decode: str, workers: int) -> dict[str, Any]:
    """DataLoader keywords: spawned workers when they decode on the GPU (CUDA cannot start in a fork)."""
    if gpu_decode == "auto" and workers > 0:
        return {"multiprocessing_context": "spawn"}
    return {}


def use_deterministic_kernels() -> None:
    """Deterministic cuDNN and cuBLAS kernels (``train.deterministic``), so a GPU run repeats and resumes
    bit for bit. Process-wide, like the seeds. Ops without a deterministic CUDA kernel warn rather than
    stop the run (``warn_only``): ResNet's only one, the adaptive average pool's backward, sums a single
    value per input at 1 x 1 output, which is exact anyway."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
