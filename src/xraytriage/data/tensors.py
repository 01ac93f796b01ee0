"""The one place an image becomes a network input, shared by training, evaluation and scoring."""

from __future__ import annotations

import numpy as np
import torch

from xraytriage.config import PreprocessConfig


def image_to_tensor(image: np.ndarray, preprocess: PreprocessConfig, in_channels: int = 1) -> torch.Tensor:
    """float32 HxW in [0, 1] -> normalised CxHxW tensor (C = 1, or 3 identical planes for RGB models)."""
    arr = (np.asarray(image, dtype=np.float32) - np.float32(preprocess.mean)) * np.float32(
        1.0 / preprocess.std
    )
    tensor = torch.from_numpy(np.ascontiguousarray(arr)).unsqueeze(0)
    if in_channels == 3:
        tensor = tensor.expand(3, -1, -1).contiguous()
    return tensor
