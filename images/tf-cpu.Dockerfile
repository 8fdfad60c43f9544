# argofl step image: TensorFlow on CPU.
#
#   make images-all      (images/build.sh tf-cpu; see README, "Step images")
#   DOCKER_BUILDKIT=1 docker build -f images/tf-cpu.Dockerfile -t argofl/step-tf-cpu:0.1.0 .
#
# Build from the repository root (the context is filtered by /.dockerignore). Needs BuildKit
# (the default builder since Docker 23) for `RUN --mount`; no `# syntax=` line, so the builder's own
# Dockerfile frontend is used and nothing is pulled for it. See docs/kubernetes.md for how the image
# is meant to run: no ENTRYPOINT (Argo sets `command: [argofl, step, ...]`), UID 10001, and a
# read-only root filesystem with only /tmp writable.
#
# Build arguments (the defaults are what a user with Docker Hub and PyPI builds):
#   BASE_IMAGE       the Python base of the builder and final stage (Debian bookworm with `python` and pip)
# and one build secret, `ca-bundle`: a PEM bundle pip trusts instead of its own (networks that
# intercept TLS). Secrets are mounted for one RUN only and never become part of a layer.
ARG BASE_IMAGE=python:3.11.15-slim-bookworm

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
    && printf 'argofl[tensorflow] @ file://%s\n' /wheels/argofl-*.whl > /wheels/requirements.txt

# ---- final ----------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="argofl/step-tf-cpu" \
      org.opencontainers.image.description="argofl workflow step image (TensorFlow, CPU)" \
      org.opencontainers.image.licenses="Apache-2.0"

# The argofl wheel with its `tensorflow` extra (tensorflow-cpu), pinned to one release here.
# The wheels are bind-mounted from the builder, so they never become a layer of this image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
    && python -m pip install --no-cache-dir --requirement /wheels/requirements.txt tensorflow-cpu==2.21.0 \
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
