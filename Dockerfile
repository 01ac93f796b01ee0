# xraytriage runtime image. PyTorch's Linux wheels from PyPI bundle the CUDA runtime, so this image
# uses the GPU with `docker run --gpus all` (NVIDIA Container Toolkit on the host) and the CPU otherwise.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    NO_ALBUMENTATIONS_UPDATE=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/xraytriage
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[parquet,cam,export]"

RUN useradd --create-home --uid 1000 xray
USER xray
WORKDIR /home/xray

ENTRYPOINT ["xraytriage"]
CMD ["--help"]
