# syntax=docker/dockerfile:1
# xraytriage runtime image. GPU: `docker run --gpus all IMAGE score ...` (NVIDIA Container Toolkit on
# the host); without --gpus the same image runs on the CPU. Build, run and scoring commands:
# docs/deployment.md. This image has not been built in CI (CI has no Docker engine).
#
# Base: the official PyTorch CUDA *runtime* image (torch, torchvision and the CUDA/cuDNN libraries from
# PyTorch's own wheel index, Python in /opt/conda). The default tag is chosen because
#   - torch 2.14.1 (+cu130) is the build the test suite runs on, and the torchvision 0.29.x shipped in
#     the image meets pyproject's torchvision>=0.29 (torchvision 0.29 is the release paired with torch
#     2.14; a torch 2.11-2.13 image would fail the install below, see KEEP_BASE_TORCH);
#   - CUDA 13.0 matches the gpu-decode extra (nvidia-nvimgcodec-cu13). CUDA 13 needs an NVIDIA driver
#     >= 580 on the host; for an older driver pick a cuda12.x tag of the same torch release, e.g.
#     --build-arg BASE_IMAGE=pytorch/pytorch:2.14.1-cuda12.8-cudnn9-runtime (check which tags exist).
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime
FROM ${BASE_IMAGE}

# torch/torchvision policy. KEEP_BASE_TORCH=1 (default): the base image's torch and torchvision are
# pinned with a pip constraint, so installing xraytriage can never swap the image's CUDA build for
# another wheel (and download gigabytes). If the base image's versions do not meet pyproject
# (torch>=2.11, torchvision>=0.29), pip then stops with a resolution error naming them: choose a base
# image with torch 2.14 or newer. KEEP_BASE_TORCH=0: no pin; pip replaces an incompatible torch and
# torchvision with the registry's builds (a larger image, and their CUDA version, not the base's).
# Either way the build fails below unless the torch that ends up installed is a CUDA build.
ARG KEEP_BASE_TORCH=1
# uid of the non-root user the container runs as (match your host uid to write into bind mounts).
ARG APP_UID=1000

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NO_ALBUMENTATIONS_UPDATE=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# shared libraries OpenCV's wheels load at import time
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/xraytriage
COPY pyproject.toml README.md ./
COPY src ./src
RUN set -eux; \
    if [ "${KEEP_BASE_TORCH}" = "1" ]; then \
        python -c "import importlib.metadata as m; print('\n'.join(f'{d.name}=={d.version}' for d in m.distributions() if d.name in ('torch', 'torchvision')))" > /tmp/base-torch.txt; \
    else \
        : > /tmp/base-torch.txt; \
    fi; \
    cat /tmp/base-torch.txt; \
    python -m pip install --constraint /tmp/base-torch.txt ".[parquet,cam,export]"; \
    python -c "import torch, torchvision; assert torch.version.cuda, f'torch {torch.__version__} is not a CUDA build'; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'torchvision', torchvision.__version__)"; \
    python -c "import onnx, onnxruntime, pyarrow, pytorch_grad_cam"; \
    xraytriage --help > /dev/null; \
    rm -rf /tmp/base-torch.txt src/*.egg-info build

# non-root user; a user that already holds APP_UID in the base image (e.g. `ubuntu` on 24.04) is removed
RUN set -eux; \
    existing="$(getent passwd "${APP_UID}" | cut -d: -f1 || true)"; \
    if [ -n "${existing}" ]; then userdel "${existing}"; fi; \
    useradd --create-home --uid "${APP_UID}" --shell /bin/bash xray
USER xray
WORKDIR /home/xray

ENTRYPOINT ["xraytriage"]
CMD ["--help"]
