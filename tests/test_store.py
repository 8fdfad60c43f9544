"""Store behaviour, the same tests against FileStore and against S3Store on a real moto server."""

from __future__ import annotations

import io
import os
import re
import threading
import time
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np
import pytest

from argofl.steps.store import FileStore, ObjectNotFound, S3Store, Store, StoreError, open_store, open_uri
from tests.servers import free_port
from tests.stores import backend_store  # noqa: F401  (fixture: store)

MIB = 1024 * 1024


class SlowStream:
    """``total`` bytes of ``fill``, handed out in small chunks with a pause; optionally fails midway."""

    def __init__(self, total: int, fill: int, *, delay: float = 0.0, fail_after: int | None = None) -> None:
        self.total, self.fill, self.delay, self.fail_after = total, fill, delay, fail_after
        self.sent = 0

    def read(self, n: int = -1) -> bytes:
        if self.fail_after is not None and self.sent >= self.fail_after:
            raise OSError("source went away")
        n = min(256 * 1024 if n < 0 else n, 256 * 1024, self.total - self.sent)
        if self.delay:
            time.sleep(self.delay)
        self.sent += n
        return bytes([self.fill]) * n


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- basic behaviour


def test_put_get_bytes_round_trip(store: Store) -> None:
    payload = bytes(range(256)) * 10
    uri = store.put_bytes("runs/r1/blob.bin", payload)
    assert uri == store.key_uri("runs/r1/blob.bin")
    assert uri.startswith(store.uri.rstrip("/") + "/")
    assert store.get_bytes("runs/r1/blob.bin") == payload
    with store.open_read("runs/r1/blob.bin") as fh:
        assert fh.read() == payload


def test_empty_object_and_overwrite(store: Store) -> None:
    store.put_bytes("k", b"")
    assert store.exists("k")
    assert store.get_bytes("k") == b""
    store.put_bytes("k", b"second")
    assert store.get_bytes("k") == b"second"
    assert store.list() == ["k"]


def test_put_file_get_file(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(300_000))
    store.put_file("a/b/file.bin", src)
    dest = tmp_path / "out" / "nested" / "copy.bin"
    assert store.get_file("a/b/file.bin", dest) == dest
    assert dest.read_bytes() == src.read_bytes()
    # Replacing an existing file leaves no temporary files behind.
    store.put_bytes("a/b/file.bin", b"new")
    store.get_file("a/b/file.bin", dest)
    assert dest.read_bytes() == b"new"
    assert os.listdir(dest.parent) == ["copy.bin"]


def test_put_dir_get_dir(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "MLmodel").write_text("flavors: {}\n")
    (src / "sub" / "weights.bin").write_bytes(b"\x00\x01")
    assert store.put_dir("m/1", src) == ["m/1/MLmodel", "m/1/sub/weights.bin"]
    out = tmp_path / "back"
    store.get_dir("m/1", out)
    assert files_under(out) == ["MLmodel", "sub/weights.bin"]
    assert (out / "sub" / "weights.bin").read_bytes() == b"\x00\x01"


def test_multipart_object(store: Store) -> None:
    """An object larger than the S3 part size goes up in parts and comes back intact."""
    data = np.random.default_rng(0).integers(0, 256, S3Store.PART_SIZE + MIB + 3, dtype=np.uint8).tobytes()
    store.put_bytes("big/object.bin", data)
    assert store.get_bytes("big/object.bin") == data
    if isinstance(store, S3Store):
        etag = store._client.stat_object(store.bucket, store._key("big/object.bin")).etag
        assert etag.endswith("-2"), f"expected a 2-part multipart ETag, got {etag}"


def test_list_with_prefixes(store: Store) -> None:
    for key in ["a/1", "a/2", "ab/3", "b/4", "a/deep/5"]:
        store.put_bytes(key, key.encode())
    assert store.list() == ["a/1", "a/2", "a/deep/5", "ab/3", "b/4"]
    assert store.list("a/") == ["a/1", "a/2", "a/deep/5"]
    assert store.list("a") == ["a/1", "a/2", "a/deep/5", "ab/3"]  # a plain string prefix
    assert store.list("a/deep/") == ["a/deep/5"]
    assert store.list("zzz/") == []


def test_list_on_missing_root_is_empty(store: Store) -> None:
    assert store.list() == []
    assert store.list("x/") == []


def test_prefixed_store_sees_only_its_prefix(store: Store) -> None:
    """A store at <root>/p lists keys relative to p and never those of a sibling <root>/pq."""
    inner = open_store(store.uri.rstrip("/") + "/p")
    sibling = open_store(store.uri.rstrip("/") + "/pq")
    inner.put_bytes("x/1", b"1")
    sibling.put_bytes("x/2", b"2")
    assert inner.list() == ["x/1"]
    assert sibling.list() == ["x/2"]
    assert store.list() == ["p/x/1", "pq/x/2"]
    assert inner.key_uri("x/1") == store.key_uri("p/x/1")
    assert store.get_bytes("p/x/1") == b"1"


def test_exists_and_delete(store: Store) -> None:
    assert not store.exists("k/v")
    store.delete("k/v")  # absent (and, on S3, in a bucket that does not exist yet): no error
    store.put_bytes("k/v", b"x")
    assert store.exists("k/v")
    assert not store.exists("k")  # a "directory" is not an object
    store.delete("k/v")
    assert not store.exists("k/v")
    assert store.list() == []
    store.delete("k/v")


def test_missing_key_is_object_not_found(store: Store, tmp_path: Path) -> None:
    uri = re.escape(store.key_uri("nope/missing.bin"))
    with pytest.raises(ObjectNotFound, match=uri):
        store.get_bytes("nope/missing.bin")
    store.put_bytes("nope/other.bin", b"x")  # bucket exists now: a plain missing key
    with pytest.raises(ObjectNotFound, match=uri):
        store.get_bytes("nope/missing.bin")
    with pytest.raises(ObjectNotFound, match=uri):
        store.open_read("nope/missing.bin")
    dest = tmp_path / "dl" / "missing.bin"
    with pytest.raises(ObjectNotFound, match=uri):
        store.get_file("nope/missing.bin", dest)
    assert not dest.exists()
    assert os.listdir(dest.parent) == []


@pytest.mark.parametrize("key", ["../x", "/abs", "a//b", "", "a/./b", "a/../b", "a/", "nul\x00byte"])
def test_bad_keys_are_refused(store: Store, key: str, tmp_path: Path) -> None:
    operations = [
        lambda: store.put_bytes(key, b"x"),
        lambda: store.get_bytes(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.get_file(key, tmp_path / "out"),
        lambda: store.key_uri(key),
    ]
    for operation in operations:
        with pytest.raises(StoreError, match="invalid store key"):
            operation()
    assert store.list() == []


def test_short_stream_is_refused(store: Store) -> None:
    with pytest.raises(StoreError, match=re.escape(store.key_uri("k"))):
        store.put_stream("k", io.BytesIO(b"12345"), 10)
    assert not store.exists("k")


def test_write_failing_midway_leaves_nothing(store: Store, tmp_path: Path) -> None:
    """A source that fails mid-upload (on S3: after the first multipart part) leaves no object."""
    total = S3Store.PART_SIZE + 4 * MIB
    stream = SlowStream(total, 7, fail_after=S3Store.PART_SIZE + 2 * MIB)
    with pytest.raises(StoreError, match="source went away"):
        store.put_stream("ckpt/partial.bin", cast(BinaryIO, stream), total)
    assert not store.exists("ckpt/partial.bin")
    assert store.list() == []
    if isinstance(store, FileStore):
        assert files_under(store.root) == []  # no temporary file either


def test_new_file_is_stored_when_its_block_ends_and_not_before_nor_after_an_error(store: Store) -> None:
    with store.new_file("ckpt/new.bin") as path:
        path.write_bytes(b"abc" * 1000)
        assert not store.exists("ckpt/new.bin")  # not visible while it is written
    assert store.get_bytes("ckpt/new.bin") == b"abc" * 1000

    def fail_midway() -> None:
        with store.new_file("ckpt/new.bin") as path:
            path.write_bytes(b"half")
            raise RuntimeError("encoder failed")

    with pytest.raises(RuntimeError, match="encoder failed"):
        fail_midway()
    assert store.get_bytes("ckpt/new.bin") == b"abc" * 1000  # the old object stays
    assert store.list() == ["ckpt/new.bin"]
    if isinstance(store, FileStore):
        assert files_under(store.root) == ["ckpt/new.bin"]  # no temporary file either
        umask = os.umask(0o022)
        os.umask(umask)
        assert (store.root / "ckpt/new.bin").stat().st_mode & 0o777 == 0o666 & ~umask


# --------------------------------------------------------------------------- FileStore specifics


def test_file_store_concurrent_reader_never_sees_partial_object(tmp_path: Path) -> None:
    """A reader polling while slow writes replace an object sees whole versions only."""
    store = FileStore(tmp_path / "store")
    size, versions = 8 * MIB, 5
    seen_events = {v: threading.Event() for v in range(1, versions + 1)}
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for version in range(1, versions + 1):
                store.put_stream("obj", cast(BinaryIO, SlowStream(size, version, delay=0.002)), size)
                # Next write only once the reader has seen this version: reads overlap every write.
                if not seen_events[version].wait(30):
                    raise TimeoutError(f"the reader never saw version {version}")
        except BaseException as exc:  # surfaced by the main thread
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    seen: list[int] = []
    while thread.is_alive():
        assert store.list() in ([], ["obj"])
        try:
            data = store.get_bytes("obj")
        except ObjectNotFound:
            continue
        assert len(data) == size, f"read a partial object of {len(data)} bytes"
        arr = np.frombuffer(data, dtype=np.uint8)
        assert (arr == arr[0]).all(), "read a mix of two versions"
        seen.append(int(arr[0]))
        seen_events[int(arr[0])].set()
    thread.join()
    assert not errors, errors
    assert sorted(set(seen)) == list(range(1, versions + 1))
    assert seen == sorted(seen), "versions went backwards"
    assert files_under(store.root) == ["obj"]


def test_file_store_objects_get_umask_permissions(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.put_bytes("x", b"1")
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "x").stat().st_mode & 0o777 == 0o666 & ~umask


def test_file_store_unwritable_root_is_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    store = FileStore(blocker / "sub")  # a path below a regular file
    with pytest.raises(StoreError, match="cannot write"):
        store.put_bytes("k", b"x")


# --------------------------------------------------------------------------- open_store / open_uri


@pytest.fixture
def fake_s3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings for an S3 store that is never contacted."""
    monkeypatch.setenv("ARGOFL_S3_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("ARGOFL_S3_ACCESS_KEY", "access")
    monkeypatch.setenv("ARGOFL_S3_SECRET_KEY", "secret")


def test_open_store_file_uris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def root_of(uri: str) -> Path:
        store = open_store(uri)
        assert isinstance(store, FileStore)
        return store.root

    assert open_store(tmp_path.as_uri()).uri == tmp_path.resolve().as_uri()
    assert root_of(tmp_path.as_uri()) == tmp_path.resolve()
    assert root_of(str(tmp_path)) == tmp_path.resolve()
    assert root_of("file://localhost" + str(tmp_path)) == tmp_path.resolve()
    assert root_of(f"file://{tmp_path}/with%20space") == tmp_path.resolve() / "with space"
    monkeypatch.chdir(tmp_path)
    assert root_of("rel/dir") == tmp_path.resolve() / "rel" / "dir"


@pytest.mark.usefixtures("fake_s3_env")
@pytest.mark.parametrize("scheme", ["s3", "minio"])
def test_open_store_s3_uris(scheme: str) -> None:
    store = open_store(f"{scheme}://my-bucket/some/prefix/")
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix) == ("my-bucket", "some/prefix")
    assert store.key_uri("a/b") == "s3://my-bucket/some/prefix/a/b"
    root = open_store(f"{scheme}://my-bucket")
    assert isinstance(root, S3Store)
    assert (root.bucket, root.prefix, root.uri) == ("my-bucket", "", "s3://my-bucket")


@pytest.mark.usefixtures("fake_s3_env")
@pytest.mark.parametrize(
    "uri", ["http://host/x", "gs://bucket/x", "ftp://h/p", "s3://", "file://otherhost/x", ""]
)
def test_open_store_refuses_bad_uris(uri: str) -> None:
    with pytest.raises(StoreError) as info:
        open_store(uri)
    assert repr(uri) in str(info.value)


@pytest.mark.usefixtures("fake_s3_env")
def test_open_uri_splits_object_uris(tmp_path: Path) -> None:
    store, key = open_uri("s3://bucket-name/a/b/c.json")
    assert isinstance(store, S3Store)
    assert (store.bucket, key) == ("bucket-name", "a/b/c.json")
    file_store, name = open_uri((tmp_path / "d" / "x.json").as_uri())
    assert isinstance(file_store, FileStore)
    assert (file_store.root, name) == (tmp_path.resolve() / "d", "x.json")


@pytest.mark.parametrize("uri", ["gs://bucket/a/x.json", "http://host/a/x.json", "file://otherhost/x.json"])
def test_open_uri_refuses_what_open_store_refuses(
    uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # gs://bucket/a/x.json was a local path, gs:/bucket/a/x.json
    with pytest.raises(StoreError) as info:
        open_uri(uri)
    assert repr(uri) in str(info.value)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- S3 failures


@pytest.mark.timeout(60)
def test_unreachable_endpoint_fails_fast_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # bound then closed: nothing listens there
    monkeypatch.setenv("ARGOFL_S3_ENDPOINT", endpoint)
    monkeypatch.setenv("ARGOFL_S3_ACCESS_KEY", "access")
    monkeypatch.setenv("ARGOFL_S3_SECRET_KEY", "secret")
    store = open_store("s3://argofl-unreachable/prefix")
    for operation in (
        lambda: store.put_bytes("k", b"x"),
        lambda: store.get_bytes("k"),
        lambda: store.exists("k"),
        lambda: store.list(),
    ):
        with pytest.raises(StoreError, match=re.escape(f"cannot reach S3 endpoint {endpoint}")):
            operation()


@pytest.mark.parametrize(
    "unset",
    [
        ["ARGOFL_S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID"],
        ["ARGOFL_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"],
    ],
)
def test_missing_credentials(monkeypatch: pytest.MonkeyPatch, unset: list[str]) -> None:
    monkeypatch.setenv("ARGOFL_S3_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("ARGOFL_S3_ACCESS_KEY", "access")
    monkeypatch.setenv("ARGOFL_S3_SECRET_KEY", "secret")
    for name in unset:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(StoreError, match="credentials"):
        open_store("s3://bucket-name")


def test_aws_credential_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARGOFL_S3_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("ARGOFL_S3_ACCESS_KEY", raising=False)
    monkeypatch.delenv("ARGOFL_S3_SECRET_KEY", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "access")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    assert isinstance(open_store("s3://bucket-name"), S3Store)


@pytest.mark.parametrize("endpoint", ["", "ftp://host:21", "http://host:9000/path"])
def test_bad_endpoint_setting(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    monkeypatch.setenv("ARGOFL_S3_ENDPOINT", endpoint)
    monkeypatch.setenv("ARGOFL_S3_ACCESS_KEY", "access")
    monkeypatch.setenv("ARGOFL_S3_SECRET_KEY", "secret")
    with pytest.raises(StoreError, match="ARGOFL_S3_ENDPOINT"):
        open_store("s3://bucket-name")


def test_invalid_bucket_name_is_store_error(s3_env: str) -> None:
    store = open_store("s3://Not_A_Valid_Bucket")
    with pytest.raises(StoreError, match="Not_A_Valid_Bucket"):
        store.put_bytes("k", b"x")
