# argofl step image: PyTorch on CPU.
#
#   make images          (images/build.sh torch-cpu; see README, "Step images")
#   DOCKER_BUILDKIT=1 docker build -f images/torch-cpu.Dockerfile -t argofl/step-torch-cpu:0.1.0 .
#
# Build from the repository root (the context is filtered by /.dockerignore). Needs BuildKit
# (the default builder since Docker 23) for `RUN --mount`; no `# syntax=` line, so the builder's own
# Dockerfile frontend is used and nothing is pulled for it. See docs/kubernetes.md for how the image
# is meant to run: no ENTRYPOINT (Argo sets `command: [argofl, step, ...]`), UID 10001, and a
# read-only root filesystem with only /tmp writable.
#
# Build arguments (the defaults are what a user with Docker Hub and PyPI builds):
#   BASE_IMAGE       the Python base of both stages (a Debian bookworm image with `python` and pip)
#   TORCH_INDEX_URL  where torch comes from (PyTorch's CPU index; PyPI's torch pulls in CUDA)
#   TORCH_WHEELS     an image whose root holds torch wheels (images/build.sh --torch-wheels DIR
#                    makes one); pip looks there before the index
# and one build secret, `ca-bundle`: a PEM bundle pip trusts instead of its own (networks that
# intercept TLS). Secrets are mounted for one RUN only and never become part of a layer.
ARG BASE_IMAGE=python:3.11.15-slim-bookworm
ARG TORCH_WHEELS=scratch

# ---- torch wheels from the builder's machine (empty by default) -----------------------------------
FROM ${TORCH_WHEELS} AS torch-wheels

# ---- builder: the argofl wheel, and Fashion-MNIST from Debian's package ----------------------------
FROM ${BASE_IMAGE} AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends dataset-fashion-mnist=0.0~git20200523.55506a9-1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
    && python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && printf 'argofl[torch] @ file://%s\n' /wheels/argofl-*.whl > /wheels/requirements.txt

# ---- final ----------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
LABEL org.opencontainers.image.title="argofl/step-torch-cpu" \
      org.opencontainers.image.description="argofl workflow step image (PyTorch, CPU)" \
      org.opencontainers.image.licenses="Apache-2.0"

# torch from the PyTorch CPU index first (PyPI's torch wheel pulls in the CUDA libraries), then the
# argofl wheel with its `torch` extra, whose torch==2.13.0 is then already satisfied. The wheels
# are bind-mounted from the builder, so they never become a layer of this image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    --mount=type=bind,from=torch-wheels,target=/torch-wheels \
    --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
    && python -m pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" --find-links /torch-wheels \
        torch==2.13.0 \
    && python -m pip install --no-cache-dir --requirement /wheels/requirements.txt \
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
