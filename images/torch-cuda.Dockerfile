# syntax=docker/dockerfile:1
# argofl step image: PyTorch with CUDA 12.6 (NVIDIA driver >= 525 on the node).
#
#   docker build -f images/torch-cuda.Dockerfile -t argofl/step-torch-cuda:0.1.0 .
#
# Build from the repository root (the context is filtered by /.dockerignore). Needs BuildKit
# (the default builder since Docker 23) for `RUN --mount`. Based on the official PyTorch runtime
# image, which already holds torch 2.13.0 with its CUDA and cuDNN libraries; the node only has to
# provide the driver (NVIDIA device plugin / container toolkit). See docs/kubernetes.md.

# ---- builder: the argofl wheel, and Fashion-MNIST from Debian's package ----------------------------
FROM python:3.11.15-slim-bookworm AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends dataset-fashion-mnist=0.0~git20200523.55506a9-1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && printf 'argofl[torch] @ file://%s\n' /wheels/argofl-*.whl > /wheels/requirements.txt

# ---- final ----------------------------------------------------------------------------------------
FROM pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime
LABEL org.opencontainers.image.title="argofl/step-torch-cuda" \
      org.opencontainers.image.description="argofl workflow step image (PyTorch, CUDA 12.6)" \
      org.opencontainers.image.licenses="Apache-2.0"

# The base image's torch 2.13.0 satisfies the `torch` extra, so only argofl and its other
# dependencies are added. The wheels are bind-mounted from the builder (never a layer here).
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --requirement /wheels/requirements.txt \
    && argofl --version

COPY --from=builder /usr/share/datasets/fashion-mnist /usr/share/datasets/fashion-mnist

RUN groupadd --system --gid 10001 argofl \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp/home --no-create-home \
        --shell /usr/sbin/nologin argofl \
    && install -d -o 10001 -g 10001 -m 0700 /tmp/home

# Everything that writes goes below /tmp, so a read-only root filesystem plus an emptyDir at /tmp
# is enough at run time.
ENV HOME=/tmp/home \
    XDG_CACHE_HOME=/tmp/home/.cache \
    XDG_CONFIG_HOME=/tmp/home/.config \
    MPLCONFIGDIR=/tmp/home/.config/matplotlib \
    KERAS_HOME=/tmp/home/.keras \
    TMPDIR=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /tmp
USER 10001:10001
CMD ["argofl", "--help"]
