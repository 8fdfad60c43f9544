"""Image classification datasets as uint8 NHWC numpy arrays: Fashion-MNIST, MNIST and CIFAR-10.

``load_dataset(name, split)`` reads the files of the dataset's usual distribution:

* ``fashion-mnist`` / ``mnist`` — the four IDX gzip files (``train-images-idx3-ubyte.gz`` …), by default
  from ``/usr/share/datasets/<name>/`` (Debian's ``dataset-fashion-mnist`` installs them there);
* ``cifar10`` — the *binary* version (``cifar-10-batches-bin/data_batch_N.bin``, ``test_batch.bin``); the
  python version is pickled and is never read.

The directory is ``data_dir`` if given, else ``$ARGOFL_DATA_DIR``, else the default; each may hold the
files themselves or a ``<name>/`` sub-directory with them. Datasets downloaded earlier are found in
``~/.cache/argofl/datasets/<name>``; with ``download=True`` (or ``ARGOFL_DOWNLOAD=1``) missing files are
downloaded there. Parsed arrays are cached per process and returned read-only; decompressed IDX files
are kept in ``~/.cache/argofl/decoded/`` (keyed by the file's path, size and modification time), so later
processes skip the inflate and memory-map them (``ARGOFL_DECODED_CACHE=0`` turns that off).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from argofl.steps.errors import BadInputError
from argofl.steps.switches import is_off

__all__ = ["DATASETS", "SPLITS", "Dataset", "DatasetError", "clear_cache", "dataset_problem", "load_dataset"]

log = logging.getLogger(__name__)

SPLITS = ("train", "test")


class DatasetError(BadInputError, RuntimeError):
    """A dataset is unknown, missing or corrupt."""


@dataclass(frozen=True)
class Dataset:
    """One split of a dataset: ``x`` uint8 (N, H, W, C), ``y`` int64 (N,) in ``[0, num_classes)``."""

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    name: str
    split: str

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one example."""
        h, w, c = self.x.shape[1:]
        return int(h), int(w), int(c)

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class _Spec:
    files: dict[str, tuple[str, ...]]  # split -> file names, relative to the dataset directory
    default_dir: str | None
    urls: tuple[str, ...]  # base URLs (IDX) or archive URLs (CIFAR-10), tried in order
    how_to_get: str
    reader: Callable[[list[Path]], tuple[np.ndarray, np.ndarray]]
    num_classes: int = 10


# --------------------------------------------------------------------------------------------- readers

_IDX_UBYTE = 0x08


DECODED_CACHE_VARIABLE = "ARGOFL_DECODED_CACHE"
"""Set to ``0`` (or ``false``/``off``/``no``) to inflate IDX files in every process, without the cache."""


def _inflate(path: Path) -> bytes:
    try:
        return zlib.decompress(path.read_bytes(), 31)  # 31: gzip container
    except (OSError, zlib.error) as exc:
        raise DatasetError(f"cannot read {path}: {exc}; delete it and get the dataset again") from exc


def _decoded_path(path: Path) -> Path | None:
    """Where the decompressed ``path`` is cached: named by its resolved path, size and mtime."""
    if is_off(DECODED_CACHE_VARIABLE):
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    key = f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()
    return Path.home() / ".cache" / "argofl" / "decoded" / f"{hashlib.sha256(key).hexdigest()}.bin"


def _write_quietly(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically; a cache that cannot be written is skipped."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, target)
    except OSError as exc:
        log.debug("not caching %s: %s", target, exc)
        with contextlib.suppress(OSError, UnboundLocalError):
            os.unlink(tmp)


def _map_decoded(cached: Path, source: Path, ndim: int) -> np.ndarray | None:
    """The IDX array of the cache file ``cached``, memory-mapped (a step reads only the pages of its
    clients' examples); None when there is none, or when it is not a whole IDX file of ``ndim``
    dimensions: that one is deleted, to be rebuilt from ``source``."""
    try:
        buffer = np.memmap(cached, dtype=np.uint8, mode="r")
    except (OSError, ValueError):  # absent or unreadable; ValueError: empty, nothing to map
        if cached.exists():
            log.warning("decoded cache %s is empty or unreadable; rebuilding it from %s", cached, source)
            with contextlib.suppress(OSError):
                cached.unlink()
        return None
    try:
        return _parse_idx(buffer.view(np.ndarray), cached, ndim)
    except DatasetError as exc:
        log.warning("%s; rebuilding it from %s", exc, source)
        with contextlib.suppress(OSError):
            cached.unlink()
        return None


def _parse_idx(data: np.ndarray, path: Path, ndim: int) -> np.ndarray:
    """The array of the IDX file of unsigned bytes held in ``data`` (its bytes, uint8)."""
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"corrupt IDX file {path}: {len(data)} bytes is shorter than its header")
    head = data[:header].tobytes()
    magic = int.from_bytes(head[:4], "big")
    if magic != (_IDX_UBYTE << 8 | ndim):
        raise DatasetError(
            f"corrupt IDX file {path}: magic number {magic:#010x}, expected {_IDX_UBYTE << 8 | ndim:#010x}"
        )
    dims = tuple(int(d) for d in np.frombuffer(head, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise DatasetError(f"corrupt IDX file {path}: {len(data)} bytes, header {dims} implies {expected}")
    return data[header:].reshape(dims)


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes with ``ndim`` dimensions (gzip-compressed if ``.gz``).

    A ``.gz`` file is inflated once: later calls, in any process, map its decompressed copy under
    ``~/.cache/argofl/decoded/`` (checked for a whole IDX file, else rebuilt) unless
    ``$ARGOFL_DECODED_CACHE`` is ``0``.
    """
    if path.suffix != ".gz":
        return _parse_idx(np.frombuffer(path.read_bytes(), dtype=np.uint8), path, ndim)
    cached = _decoded_path(path)
    if cached is not None:
        mapped = _map_decoded(cached, path, ndim)
        if mapped is not None:
            return mapped
    data = _inflate(path)
    array = _parse_idx(np.frombuffer(data, dtype=np.uint8), path, ndim)
    if cached is not None:
        _write_quietly(cached, data)
    return array


def _read_idx_pair(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    images_path, labels_path = paths
    images = _read_idx(images_path, 3)
    labels = _read_idx(labels_path, 1)
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"corrupt dataset: {images_path} has {images.shape[0]} images, {labels_path} "
            f"{labels.shape[0]} labels"
        )
    return images[..., np.newaxis], labels.astype(np.int64)


_CIFAR_RECORD = 1 + 32 * 32 * 3


def _read_cifar_bin(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Parse CIFAR-10 binary batches: records of 1 label byte + 3072 pixel bytes (CHW, 32x32)."""
    xs, ys = [], []
    for path in paths:
        data = path.read_bytes()
        if not data or len(data) % _CIFAR_RECORD:
            raise DatasetError(
                f"corrupt CIFAR-10 batch {path}: {len(data)} bytes is not a multiple of {_CIFAR_RECORD}"
            )
        records = np.frombuffer(data, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
        ys.append(records[:, 0].astype(np.int64))
        xs.append(records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)


def _idx_files(prefix: str) -> tuple[str, str]:
    return f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"


_CIFAR_DIR = "cifar-10-batches-bin"

DATASETS: dict[str, _Spec] = {
    "fashion-mnist": _Spec(
        files={"train": _idx_files("train"), "test": _idx_files("t10k")},
        default_dir="/usr/share/datasets/fashion-mnist",
        urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        how_to_get="install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
        reader=_read_idx_pair,
    ),
    "mnist": _Spec(
        files={"train": _idx_files("train"), "test": _idx_files("t10k")},
        default_dir="/usr/share/datasets/mnist",
        urls=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        how_to_get="put the four MNIST IDX .gz files there",
        reader=_read_idx_pair,
    ),
    "cifar10": _Spec(
        files={
            "train": tuple(f"{_CIFAR_DIR}/data_batch_{i}.bin" for i in range(1, 6)),
            "test": (f"{_CIFAR_DIR}/test_batch.bin",),
        },
        default_dir=None,
        urls=("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
        how_to_get=f"extract cifar-10-binary.tar.gz there (the binary version, {_CIFAR_DIR}/)",
        reader=_read_cifar_bin,
    ),
}

# ------------------------------------------------------------------------------------------- locating


def _cache_dir(name: str) -> Path:
    return Path.home() / ".cache" / "argofl" / "datasets" / name


def _has_files(directory: Path, files: tuple[str, ...]) -> bool:
    return all((directory / f).is_file() for f in files)


def _locate(name: str, spec: _Spec, split: str, data_dir: str | None) -> tuple[Path | None, str]:
    """Return (directory holding the split's files or None, description of where we looked)."""
    base = data_dir or os.environ.get("ARGOFL_DATA_DIR") or spec.default_dir
    candidates: list[Path] = []
    if base:
        candidates += [Path(base), Path(base) / name]
    candidates.append(_cache_dir(name))
    for directory in candidates:
        if _has_files(directory, spec.files[split]):
            return directory, str(directory)
    return None, str(base) if base else str(_cache_dir(name))


def _download(name: str, spec: _Spec, split: str) -> Path:
    """Download the dataset into the cache directory; DatasetError if that fails."""
    target = _cache_dir(name)
    target.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    for url in spec.urls:
        try:
            if url.endswith(".tar.gz"):
                _download_archive(url, target)
            else:
                for file in spec.files[split]:
                    if not (target / file).is_file():
                        _download_file(url + file, target / file)
        except (OSError, tarfile.TarError, DatasetError) as exc:
            errors.append(f"{url}: {exc}")
            continue
        if _has_files(target, spec.files[split]):
            return target
        errors.append(f"{url}: files missing after download")
    raise DatasetError(f"could not download {name} into {target}: {'; '.join(errors)}")


def _download_file(url: str, dest: Path) -> None:
    log.info("downloading %s", url)
    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                shutil.copyfileobj(response, tmp)
        except BaseException:
            Path(tmp.name).unlink(missing_ok=True)
            raise
    os.replace(tmp.name, dest)


def _download_archive(url: str, target: Path) -> None:
    with tempfile.TemporaryDirectory(dir=target) as tmpdir:
        archive = Path(tmpdir) / "archive.tar.gz"
        _download_file(url, archive)
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(target, filter="data")


# ---------------------------------------------------------------------------------------------- loading

_CACHE: dict[tuple[str, str, str], Dataset] = {}


def clear_cache() -> None:
    """Forget the parsed arrays cached by :func:`load_dataset`."""
    _CACHE.clear()


def _env_download() -> bool:
    return os.environ.get("ARGOFL_DOWNLOAD", "").strip().lower() in ("1", "true", "yes")


def _not_found(name: str, spec: _Spec, looked_in: str) -> str:
    return (
        f"{name} not found in {looked_in}: {spec.how_to_get}, point the data_dir setting at it "
        "(-p data-dir=DIR; argofl data split --data-dir DIR), or set ARGOFL_DOWNLOAD=1"
    )


def dataset_problem(name: str, split: str, data_dir: str | None = None) -> str | None:
    """Why :func:`load_dataset` would not find ``split`` of the known dataset ``name`` where it looks
    (``data_dir`` first), with no ``ARGOFL_DOWNLOAD=1`` to fetch it; None when it would. Reads no data."""
    spec = DATASETS[name]
    directory, looked_in = _locate(name, spec, split, data_dir)
    if directory is not None or _env_download():
        return None
    return _not_found(name, spec, looked_in)


def load_dataset(
    name: str,
    split: str,
    data_dir: str | None = None,
    *,
    limit: int | None = None,
    download: bool | None = None,
) -> Dataset:
    """Load one split of a dataset (cached per process); ``limit`` keeps the first N examples.

    ``download`` (default: ``$ARGOFL_DOWNLOAD`` is ``1``) fetches missing files into
    ``~/.cache/argofl/datasets/<name>``. Raises DatasetError for an unknown name or split, missing or
    corrupt files, or a failed download.
    """
    spec = DATASETS.get(name)
    if spec is None:
        raise DatasetError(f"unknown dataset {name!r}: expected one of {', '.join(sorted(DATASETS))}")
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r} for {name}: expected one of {', '.join(SPLITS)}")
    if limit is not None and limit < 1:
        raise DatasetError(f"invalid limit {limit}: expected a positive number of examples or None")

    directory, looked_in = _locate(name, spec, split, data_dir)
    if directory is None:
        if download if download is not None else _env_download():
            directory = _download(name, spec, split)
        else:
            raise DatasetError(_not_found(name, spec, looked_in))

    key = (name, split, str(directory.resolve()))
    dataset = _CACHE.get(key)
    if dataset is None:
        x, y = spec.reader([directory / f for f in spec.files[split]])
        if y.size and (y.min() < 0 or y.max() >= spec.num_classes):
            raise DatasetError(
                f"corrupt {name} labels in {directory}: values in [{y.min()}, {y.max()}], "
                f"expected [0, {spec.num_classes})"
            )
        x.setflags(write=False)
        y.setflags(write=False)
        dataset = Dataset(x=x, y=y, num_classes=spec.num_classes, name=name, split=split)
        _CACHE[key] = dataset
    if limit is not None and limit < len(dataset):
        dataset = Dataset(
            x=dataset.x[:limit], y=dataset.y[:limit], num_classes=dataset.num_classes, name=name, split=split
        )
    return dataset
