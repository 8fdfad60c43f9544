"""Dataset loading: the real Fashion-MNIST files, corrupt files, missing files, limits."""

from __future__ import annotations

import gzip
import shutil
import struct
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from argofl.steps import data
from argofl.steps.data import Dataset, DatasetError, load_dataset

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist not installed",
)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No environment overrides, an empty home (download cache) and no network."""
    monkeypatch.delenv("ARGOFL_DATA_DIR", raising=False)
    monkeypatch.delenv("ARGOFL_DOWNLOAD", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)


def write_idx(path: Path, array: np.ndarray, *, magic: int | None = None) -> None:
    """Write ``array`` (uint8) as a gzip IDX file."""
    magic = (0x08 << 8 | array.ndim) if magic is None else magic
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def write_mnist_like(directory: Path, n_train: int = 12, n_test: int = 5) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)


@needs_fmnist
@pytest.mark.parametrize(("split", "n"), [("train", 60000), ("test", 10000)])
def test_real_fashion_mnist(split: str, n: int) -> None:
    ds = load_dataset("fashion-mnist", split)
    assert isinstance(ds, Dataset)
    assert ds.x.shape == (n, 28, 28, 1)
    assert ds.x.dtype == np.uint8
    assert ds.y.shape == (n,)
    assert ds.y.dtype == np.int64
    assert ds.input_shape == (28, 28, 1)
    assert ds.num_classes == 10
    assert (ds.name, ds.split, len(ds)) == ("fashion-mnist", split, n)
    assert set(np.unique(ds.y)) == set(range(10))
    assert ds.x.max() > 200  # real images, not zeros


@needs_fmnist
def test_cached_per_process_and_read_only() -> None:
    first = load_dataset("fashion-mnist", "test")
    assert load_dataset("fashion-mnist", "test") is first
    with pytest.raises(ValueError):
        first.x[0, 0, 0, 0] = 1


@needs_fmnist
def test_limit_takes_the_first_examples() -> None:
    full = load_dataset("fashion-mnist", "test")
    small = load_dataset("fashion-mnist", "test", limit=100)
    assert small.x.shape == (100, 28, 28, 1)
    np.testing.assert_array_equal(small.y, full.y[:100])
    np.testing.assert_array_equal(small.x, full.x[:100])
    with pytest.raises(DatasetError, match="limit"):
        load_dataset("fashion-mnist", "test", limit=0)


def test_data_dir_and_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mnist_like(tmp_path / "direct")
    ds = load_dataset("mnist", "train", data_dir=str(tmp_path / "direct"))
    assert ds.x.shape == (12, 28, 28, 1)
    np.testing.assert_array_equal(ds.y, np.arange(12) % 10)
    write_mnist_like(tmp_path / "root" / "mnist", n_train=7)  # a root with <name>/ beneath
    monkeypatch.setenv("ARGOFL_DATA_DIR", str(tmp_path / "root"))
    assert len(load_dataset("mnist", "train")) == 7


def test_unknown_name_and_split() -> None:
    with pytest.raises(DatasetError, match=r"'imagenet'.*cifar10, fashion-mnist, mnist"):
        load_dataset("imagenet", "train")
    with pytest.raises(DatasetError, match=r"'validation'.*train, test"):
        load_dataset("fashion-mnist", "validation")


def test_missing_dir_gives_one_line_with_what_to_do(tmp_path: Path) -> None:
    missing = tmp_path / "nothing"
    with pytest.raises(DatasetError) as info:
        load_dataset("fashion-mnist", "train", data_dir=str(missing))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"fashion-mnist not found in {missing}")
    assert "apt-get install dataset-fashion-mnist" in message
    assert "-p data-dir=DIR" in message  # argofl run/submit (a step has no --data-dir of its own)
    assert "argofl data split --data-dir DIR" in message
    assert "ARGOFL_DOWNLOAD=1" in message


@pytest.mark.parametrize("how", ["kwarg", "env"])
def test_download_without_network_fails_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    if how == "env":
        monkeypatch.setenv("ARGOFL_DOWNLOAD", "1")
    with pytest.raises(DatasetError, match="could not download mnist") as info:
        load_dataset(
            "mnist", "test", data_dir=str(tmp_path / "nothing"), download=True if how == "kwarg" else None
        )
    assert str(tmp_path / "home" / ".cache" / "argofl" / "datasets" / "mnist") in str(info.value)


def test_earlier_download_is_found_in_the_cache(tmp_path: Path) -> None:
    write_mnist_like(tmp_path / "home" / ".cache" / "argofl" / "datasets" / "mnist", n_test=3)
    assert len(load_dataset("mnist", "test", data_dir=str(tmp_path / "nothing"))) == 3


def test_bad_magic_names_the_file(tmp_path: Path) -> None:
    write_mnist_like(tmp_path)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(bad, np.zeros((2, 28, 28)), magic=0x0803 + 0x100)
    with pytest.raises(DatasetError, match=rf"{bad}.*magic"):
        load_dataset("mnist", "train", data_dir=str(tmp_path))


def test_truncated_and_corrupt_gzip_name_the_file(tmp_path: Path) -> None:
    write_mnist_like(tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    header = struct.pack(">II", 0x0801, 50)  # claims 50 labels, has 5
    labels.write_bytes(gzip.compress(header + bytes(5)))
    with pytest.raises(DatasetError, match=rf"{labels}.*bytes"):
        load_dataset("mnist", "test", data_dir=str(tmp_path))
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:40])
    with pytest.raises(DatasetError, match=str(images)):
        load_dataset("mnist", "test", data_dir=str(tmp_path))


def test_label_out_of_range(tmp_path: Path) -> None:
    write_mnist_like(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 2, 3, 12]))
    with pytest.raises(DatasetError, match="labels"):
        load_dataset("mnist", "test", data_dir=str(tmp_path))


def test_cifar10_binary_batches(tmp_path: Path) -> None:
    batches = tmp_path / "cifar-10-batches-bin"
    batches.mkdir()
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    labels = np.array([3, 0, 9, 1], dtype=np.uint8)
    records = np.concatenate([labels[:, None], pixels.reshape(4, -1)], axis=1)
    (batches / "test_batch.bin").write_bytes(records.tobytes())
    ds = load_dataset("cifar10", "test", data_dir=str(tmp_path))
    assert ds.x.shape == (4, 32, 32, 3)
    assert ds.input_shape == (32, 32, 3)
    np.testing.assert_array_equal(ds.y, labels)
    np.testing.assert_array_equal(ds.x[2, 5, 7], pixels[2, :, 5, 7])  # CHW -> HWC
    (batches / "test_batch.bin").write_bytes(records.tobytes()[:-1])
    data.clear_cache()
    with pytest.raises(DatasetError, match=r"test_batch\.bin"):
        load_dataset("cifar10", "test", data_dir=str(tmp_path))


def test_cache_is_keyed_by_directory(tmp_path: Path) -> None:
    write_mnist_like(tmp_path / "a", n_test=2)
    write_mnist_like(tmp_path / "b", n_test=4)
    assert len(load_dataset("mnist", "test", data_dir=str(tmp_path / "a"))) == 2
    assert len(load_dataset("mnist", "test", data_dir=str(tmp_path / "b"))) == 4
    shutil.rmtree(tmp_path / "a")
    assert len(load_dataset("mnist", "test", data_dir=str(tmp_path / "b"))) == 4


def test_decompressed_files_are_reused_until_the_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A later process skips the inflate: the decompressed IDX files are cached under the home."""
    import zlib

    import argofl.steps.data as data

    write_mnist_like(tmp_path / "mnist", n_test=3)
    first = load_dataset("mnist", "test", str(tmp_path))
    assert len(list((tmp_path / "home" / ".cache" / "argofl" / "decoded").glob("*.bin"))) == 2
    data.clear_cache()
    inflated: list[int] = []
    real = zlib.decompress

    def counting(data: bytes, wbits: int = 15) -> bytes:
        inflated.append(len(data))
        return real(data, wbits)

    monkeypatch.setattr(data.zlib, "decompress", counting)
    again = load_dataset("mnist", "test", str(tmp_path))
    assert inflated == []
    assert again.x.tobytes() == first.x.tobytes()
    assert again.y.tolist() == first.y.tolist()
    data.clear_cache()
    write_mnist_like(tmp_path / "mnist", n_test=4)  # new content: new size and mtime, a new key
    assert len(load_dataset("mnist", "test", str(tmp_path))) == 4
    assert len(inflated) == 2


def _decoded_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "home" / ".cache" / "argofl" / "decoded").glob("*.bin"))


def test_later_loads_map_the_decoded_file(tmp_path: Path) -> None:
    """A later process maps the decompressed file (reads only the pages it uses): same arrays."""
    write_mnist_like(tmp_path / "mnist", n_test=3)
    first = load_dataset("mnist", "test", str(tmp_path))
    assert not any(isinstance(b, np.memmap) for b in _bases(first.x))  # inflated this time
    data.clear_cache()
    again = load_dataset("mnist", "test", str(tmp_path))
    assert any(isinstance(b, np.memmap) for b in _bases(again.x))
    assert type(again.x) is np.ndarray  # a plain array to its users
    assert not again.x.flags.writeable
    np.testing.assert_array_equal(again.x, first.x)
    np.testing.assert_array_equal(again.y, first.y)


def _bases(array: np.ndarray) -> list[object]:
    chain: list[object] = []
    base = array.base
    while base is not None:
        chain.append(base)
        base = getattr(base, "base", None)
    return chain


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[:-7], id="truncated"),
        pytest.param(lambda b: b + b"\0", id="too-long"),
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: b"\xff" + b[1:], id="bad-magic"),
        pytest.param(lambda b: b[:4] + (9999).to_bytes(4, "big") + b[8:], id="bad-dims"),
    ],
)
def test_a_damaged_decoded_file_is_rebuilt_not_trusted(
    tmp_path: Path, damage: object, caplog: pytest.LogCaptureFixture
) -> None:
    write_mnist_like(tmp_path / "mnist", n_test=3)
    first = load_dataset("mnist", "test", str(tmp_path))
    x, y = first.x.copy(), first.y.copy()
    for cached in _decoded_files(tmp_path):
        cached.write_bytes(damage(cached.read_bytes()))  # type: ignore[operator]
    data.clear_cache()
    again = load_dataset("mnist", "test", str(tmp_path))
    np.testing.assert_array_equal(again.x, x)
    np.testing.assert_array_equal(again.y, y)
    assert "rebuilding it from" in caplog.text
    data.clear_cache()
    rebuilt = load_dataset("mnist", "test", str(tmp_path))  # from the rewritten cache
    assert any(isinstance(b, np.memmap) for b in _bases(rebuilt.x))
    np.testing.assert_array_equal(rebuilt.x, x)


def test_decoded_cache_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARGOFL_DECODED_CACHE", "0")
    write_mnist_like(tmp_path / "mnist", n_test=3)
    assert len(load_dataset("mnist", "test", str(tmp_path))) == 3
    assert _decoded_files(tmp_path) == []
