#!/usr/bin/env bash
# Build the argofl step images with the local Docker engine (used by `make images`, `make images-all`
# and CI). Run from anywhere; the build context is the repository root, filtered by /.dockerignore.
#
#   images/build.sh [OPTIONS] [VARIANT...]     VARIANT: torch-cpu (default) torch-cuda tf-cpu tf-gpu
#   images/build.sh local-base                 only bootstrap the local Debian base (see --local-base)
#
# Options (each also read from the environment variable in brackets; without any, the images are
# what a user with Docker Hub, PyPI and PyTorch's index builds):
#   --base IMAGE          Python base image of the Debian bookworm kind    [ARGOFL_BASE_IMAGE]
#   --local-base          bootstrap that base here with debootstrap (no registry needed) and use it
#                                                                         [ARGOFL_LOCAL_BASE=1]
#   --torch-index URL     where pip finds torch (no credentials in it: build args are kept in
#                         the image history)                               [ARGOFL_TORCH_INDEX_URL]
#   --torch-wheels DIR    a directory holding torch wheels, looked at before the index
#                                                                         [ARGOFL_TORCH_WHEELS]
#   --ca-bundle FILE      PEM bundle pip trusts, passed as a build secret [ARGOFL_CA_BUNDLE]
#   --tag TAG             image tag (default: the version in setup.cfg)   [ARGOFL_IMAGE_TAG]
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL_BASE_IMAGE="argofl/base-python:3.11-bookworm"
WHEELS_IMAGE="argofl/torch-wheels:local"
CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/argofl"

die() { echo "images/build.sh: $*" >&2; exit 2; }

base="${ARGOFL_BASE_IMAGE:-}"
local_base="${ARGOFL_LOCAL_BASE:-}"
torch_index="${ARGOFL_TORCH_INDEX_URL:-}"
torch_wheels="${ARGOFL_TORCH_WHEELS:-}"
ca_bundle="${ARGOFL_CA_BUNDLE:-}"
tag="${ARGOFL_IMAGE_TAG:-$(sed -n 's/^version *= *//p' "$REPO/setup.cfg")}"
variants=()
while [ $# -gt 0 ]; do
  case "$1" in
    --base) base="${2:?--base needs an image}"; shift 2 ;;
    --local-base) local_base=1; shift ;;
    --torch-index) torch_index="${2:?--torch-index needs a URL}"; shift 2 ;;
    --torch-wheels) torch_wheels="${2:?--torch-wheels needs a directory}"; shift 2 ;;
    --ca-bundle) ca_bundle="${2:?--ca-bundle needs a file}"; shift 2 ;;
    --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
    -h|--help) sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1 (expected --base, --local-base, --torch-index, --torch-wheels, --ca-bundle or --tag)" ;;
    *) variants+=("$1"); shift ;;
  esac
done
[ ${#variants[@]} -gt 0 ] || variants=(torch-cpu)

# A CLI that can build with BuildKit: one with the buildx plugin, or a pre-23 CLI (DOCKER_BUILDKIT=1).
pick_docker() {
  local candidate
  for candidate in ${DOCKER:-} $(type -aP docker 2>/dev/null); do
    if "$candidate" buildx version >/dev/null 2>&1; then echo "$candidate"; return; fi
    local major
    major="$("$candidate" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1 || true)"
    if [ -n "$major" ] && [ "$major" -lt 23 ] 2>/dev/null; then echo "$candidate"; return; fi
  done
  die "no docker CLI that can build with BuildKit (install the buildx plugin, or set DOCKER=/path/to/docker)"
}
DOCKER_CLI="$(pick_docker)"
"$DOCKER_CLI" info >/dev/null 2>&1 || die "no Docker engine answers (start one: sudo dockerd &, or systemctl start docker)"

build_local_base() {
  if "$DOCKER_CLI" image inspect "$LOCAL_BASE_IMAGE" >/dev/null 2>&1; then return; fi
  local tarball="$CACHE_DIR/base-python-3.11-bookworm.tar"
  if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || die "--local-base needs debootstrap (apt-get install debootstrap)"
    [ "$(id -u)" = 0 ] || die "--local-base needs root (debootstrap)"
    local root
    root="$(mktemp -d)"
    trap 'rm -rf "$root"' RETURN
    echo "bootstrapping Debian bookworm with Python into $root (about a minute)" >&2
    debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates \
      bookworm "$root" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >/dev/null
    # Shape it like python:3.11-slim: `python` on PATH and pip allowed to install system-wide.
    ln -sf python3 "$root/usr/bin/python"
    rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
    mkdir -p "$CACHE_DIR"
    tar -C "$root" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
  fi
  "$DOCKER_CLI" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
    "$tarball" "$LOCAL_BASE_IMAGE" >/dev/null
}

if [ "${1:-}" = local-base ] || [ "${variants[0]}" = local-base ]; then build_local_base; exit 0; fi

args=()
secret=()
if [ -n "$local_base" ]; then build_local_base; base="$LOCAL_BASE_IMAGE"; fi
[ -z "$base" ] || args+=(--build-arg "BASE_IMAGE=$base")
if [ -n "$torch_index" ]; then
  case "$torch_index" in
    *://*@*) die "--torch-index $torch_index holds credentials, which would stay in the image history; use a URL without them" ;;
  esac
  args+=(--build-arg "TORCH_INDEX_URL=$torch_index")
fi
if [ -n "$ca_bundle" ]; then
  [ -s "$ca_bundle" ] || die "--ca-bundle $ca_bundle: no such file (expected a PEM bundle)"
  secret=(--secret "id=ca-bundle,src=$ca_bundle")
fi
if [ -n "$torch_wheels" ]; then
  shopt -s nullglob
  wheels=("$torch_wheels"/torch-*.whl)
  shopt -u nullglob
  [ ${#wheels[@]} -gt 0 ] || die "--torch-wheels $torch_wheels holds no torch-*.whl"
  ctx="$(mktemp -d)"
  trap 'rm -rf "$ctx"' EXIT
  for w in "${wheels[@]}"; do ln "$w" "$ctx/" 2>/dev/null || cp "$w" "$ctx/"; done
  printf 'FROM scratch\nCOPY *.whl /\n' > "$ctx/Dockerfile"
  DOCKER_BUILDKIT=1 "$DOCKER_CLI" build -q -t "$WHEELS_IMAGE" "$ctx" >/dev/null
  args+=(--build-arg "TORCH_WHEELS=$WHEELS_IMAGE")
  # the index still serves torch's own dependencies
  [ -n "$torch_index" ] || args+=(--build-arg "TORCH_INDEX_URL=https://pypi.org/simple")
fi

for variant in "${variants[@]}"; do
  dockerfile="$REPO/images/$variant.Dockerfile"
  [ -f "$dockerfile" ] || die "unknown image $variant (expected one of: $(cd "$REPO/images" && ls -- *.Dockerfile | sed 's/\.Dockerfile$//' | tr '\n' ' '))"
  image="argofl/step-$variant:$tag"
  echo "building $image" >&2
  DOCKER_BUILDKIT=1 "$DOCKER_CLI" build --progress=plain "${args[@]}" "${secret[@]}" \
    -f "$dockerfile" -t "$image" "$REPO"
  "$DOCKER_CLI" image inspect --format "$image {{.Size}} bytes" "$image"
done
