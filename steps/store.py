"""Object stores for checkpoints and artifacts: one interface, a ``file://`` and an ``s3://`` backend.

``open_store(uri)`` is the one place that maps URIs to backends, so tests (and the embedded
default) can point everything at a temporary directory.

* ``file:///abs/dir`` (or a plain path) — a directory on this machine.
* ``s3://bucket/prefix`` or ``minio://bucket/prefix`` — any S3-protocol server through the ``minio``
  SDK. Endpoint and credentials come from the environment only (never from a manifest or config):
  ``ARGOFL_S3_ENDPOINT`` (e.g. ``http://minio.argofl:9000``), ``ARGOFL_S3_ACCESS_KEY`` /
  ``ARGOFL_S3_SECRET_KEY`` (falling back to ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``) and
  ``ARGOFL_S3_REGION``.

Every write is atomic: a reader sees either nothing or the whole object.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import shutil
import tempfile
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from argofl.steps.errors import BadInputError, TransientError

__all__ = [
    "FileStore",
    "ObjectNotFound",
    "S3Store",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "check_store_uri",
    "join_key",
    "open_store",
    "open_uri",
]


class StoreError(BadInputError, RuntimeError):
    """A store could not be reached or refused an operation."""


class ObjectNotFound(StoreError):
    """The requested key does not exist in the store."""


class StoreUnavailable(TransientError, StoreError):
    """The store could not be reached or failed temporarily (a retry may succeed): exit code 75."""


def join_key(*parts: str) -> str:
    """Join key parts with ``/``, dropping empty parts and duplicate slashes."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def _check_key(key: str) -> str:
    if (
        not key
        or key.startswith("/")
        or "\x00" in key
        or any(seg in ("", ".", "..") for seg in key.split("/"))
    ):
        raise StoreError(f"invalid store key {key!r}: keys are relative paths without '.', '..' or '//'")
    return key


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once: os.umask can only be queried by setting it, which is not thread-safe.
_UMASK = _current_umask()
_PARTIAL_SUFFIX = ".partial"


class Store(ABC):
    """A flat key → bytes store rooted at :attr:`uri`."""

    uri: str

    @abstractmethod
    def put_stream(self, key: str, stream: BinaryIO, length: int) -> str:
        """Atomically write ``length`` bytes from ``stream`` at ``key``; return the object's URI."""

    @abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """Open ``key`` for reading; raise :class:`ObjectNotFound` when absent."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""

    @abstractmethod
    def size(self, key: str) -> int:
        """The size in bytes of the object at ``key``, without reading it; :class:`ObjectNotFound`
        when absent."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """All keys below ``prefix`` (recursive), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; absent keys are ignored."""

    def local_path(self, key: str) -> Path | None:
        """The file holding ``key`` on this machine, if the store keeps objects as files (else None).

        Objects are replaced atomically, never rewritten in place: an open file keeps its bytes."""
        return None

    def key_uri(self, key: str) -> str:
        """The URI of ``key`` in this store."""
        return self.uri.rstrip("/") + "/" + _check_key(key)

    def put_bytes(self, key: str, data: bytes) -> str:
        """Atomically write ``data`` at ``key``."""
        return self.put_stream(key, io.BytesIO(data), len(data))

    def get_bytes(self, key: str) -> bytes:
        """The whole object at ``key``."""
        with self.open_read(key) as fh:
            return fh.read()

    def put_file(self, key: str, path: str | os.PathLike[str]) -> str:
        """Atomically upload the file at ``path`` to ``key``."""
        with open(path, "rb") as fh:
            return self.put_stream(key, fh, os.fstat(fh.fileno()).st_size)

    @contextlib.contextmanager
    def new_file(self, key: str) -> Iterator[Path]:
        """A fresh file to write the object at ``key`` into; stored atomically at ``key`` when the block
        ends without an exception, never otherwise (:class:`FileStore` writes it in place: no copy)."""
        with tempfile.TemporaryDirectory(prefix="argofl-put-") as scratch:
            path = Path(scratch) / "object"
            yield path
            self.put_file(key, path)

    def get_file(self, key: str, path: str | os.PathLike[str]) -> Path:
        """Download ``key`` to ``path`` (atomically replacing it); return the path."""
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out, self.open_read(key) as src:
                shutil.copyfileobj(src, out, 1 << 20)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return dest

    def put_dir(self, prefix: str, directory: str | os.PathLike[str]) -> builtins.list[str]:
        """Upload every file below ``directory`` under ``prefix``; return the keys written."""
        root = Path(directory)
        keys = []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            key = join_key(prefix, path.relative_to(root).as_posix())
            self.put_file(key, path)
            keys.append(key)
        return keys

    def get_dir(self, prefix: str, directory: str | os.PathLike[str]) -> builtins.list[Path]:
        """Download every key below ``prefix/`` into ``directory``; return the files written."""
        root = Path(directory)
        base = prefix.strip("/") + "/"
        paths = []
        for key in self.list(base):
            paths.append(self.get_file(key, root / key[len(base) :]))
        return paths


class FileStore(Store):
    """A directory on this machine; atomic writes via a temporary file and ``os.replace``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put_stream(self, key: str, stream: BinaryIO, length: int) -> str:
        dest = self._path(key)
        uri = self.key_uri(key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=_PARTIAL_SUFFIX, dir=dest.parent)
        except OSError as exc:
            raise StoreError(f"cannot write {uri}: {exc.strerror or exc}") from exc
        try:
            # mkstemp creates 0600 files; objects get the usual umask-derived mode instead.
            os.fchmod(fd, 0o666 & ~_UMASK)
            with os.fdopen(fd, "wb") as out:
                copied = _copy_exact(stream, out, length)
                out.flush()
                os.fsync(out.fileno())
            if copied != length:
                raise StoreError(f"short write to {uri}: expected {length} bytes, the stream gave {copied}")
            os.replace(tmp, dest)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise StoreError(f"cannot write {uri}: {exc.strerror or exc}") from exc
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return uri

    def open_read(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"no object at {self.key_uri(key)}") from None
        except OSError as exc:
            raise StoreError(f"cannot read {self.key_uri(key)}: {exc.strerror or exc}") from exc

    @contextlib.contextmanager
    def new_file(self, key: str) -> Iterator[Path]:
        dest = self._path(key)
        uri = self.key_uri(key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=_PARTIAL_SUFFIX, dir=dest.parent)
            os.close(fd)
        except OSError as exc:
            raise StoreError(f"cannot write {uri}: {exc.strerror or exc}") from exc
        try:
            yield Path(tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fchmod(fd, 0o666 & ~_UMASK)  # as put_stream's objects
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, dest)
        except OSError as exc:
            raise StoreError(f"cannot write {uri}: {exc.strerror or exc}") from exc
        finally:
            Path(tmp).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def size(self, key: str) -> int:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(f"no object at {self.key_uri(key)}")
        return path.stat().st_size

    def list(self, prefix: str = "") -> builtins.list[str]:
        if not self.root.is_dir():
            return []
        keys = []
        for path in self.root.rglob("*"):
            if path.is_file() and not _is_partial(path.name):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot delete {self.key_uri(key)}: {exc.strerror or exc}") from exc


def _is_partial(name: str) -> bool:
    """Whether ``name`` is one of :meth:`FileStore.put_stream`'s temporary files."""
    return name.startswith(".") and name.endswith(_PARTIAL_SUFFIX)


def _copy_exact(src: BinaryIO, dst: Any, length: int) -> int:
    """Copy at most ``length`` bytes from ``src`` to ``dst``; return how many were copied."""
    copied = 0
    while copied < length:
        chunk = src.read(min(1 << 20, length - copied))
        if not chunk:
            break
        dst.write(chunk)
        copied += len(chunk)
    return copied


class S3Store(Store):
    """A bucket (and optional key prefix) on an S3-protocol server, through the ``minio`` SDK.

    A single PUT — multipart or not — only becomes visible when complete, so writes are atomic.
    The bucket is created on first write; reading from a missing bucket is :class:`ObjectNotFound`.
    """

    PART_SIZE = 16 * 1024 * 1024

    def __init__(
        self, bucket: str, prefix: str = "", *, client: Any = None, env: Mapping[str, str] | None = None
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}" + (f"/{self.prefix}" if self.prefix else "")
        if client is None:
            env = os.environ if env is None else env
            client = _minio_client_from_env(env)
            self.endpoint = env.get("ARGOFL_S3_ENDPOINT", "<unset>")
        else:
            base_url = getattr(client, "_base_url", None)
            self.endpoint = str(getattr(base_url, "host", "<custom client>"))
        self._client = client
        self._bucket_checked = False

    def _key(self, key: str) -> str:
        return join_key(self.prefix, _check_key(key))

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one SDK call, turning its exceptions into :class:`StoreError` naming ``what``."""
        import urllib3
        from minio.error import MinioException, S3Error

        try:
            return fn(*args, **kwargs)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise ObjectNotFound(f"no object at {what}") from None
            if exc.code == "NoSuchBucket":
                raise ObjectNotFound(f"no object at {what}: bucket {self.bucket} does not exist") from None
            error = StoreUnavailable if exc.code in _S3_TRANSIENT_CODES else StoreError
            raise error(f"S3 error on {what}: {exc.code}: {exc.message}") from None
        except urllib3.exceptions.HTTPError as exc:
            reason = getattr(exc, "reason", None) or exc
            raise StoreUnavailable(f"cannot reach S3 endpoint {self.endpoint} for {what}: {reason}") from None
        except MinioException as exc:  # e.g. ServerError: an HTTP 5xx without an S3 error body
            raise StoreUnavailable(f"S3 endpoint {self.endpoint} failed on {what}: {exc}") from None
        except OSError as exc:  # reading the source stream, or a socket error urllib3 did not wrap
            raise StoreUnavailable(f"S3 transfer of {what} via {self.endpoint} failed: {exc}") from exc
        except ValueError as exc:  # the SDK validates bucket and object names locally
            raise StoreError(f"S3 request for {what} refused: {exc}") from None

    def _ensure_bucket(self) -> None:
        if self._bucket_checked:
            return
        from minio.error import S3Error

        def create_if_missing() -> None:
            if self._client.bucket_exists(self.bucket):
                return
            try:
                self._client.make_bucket(self.bucket)
            except S3Error as exc:  # a concurrent writer created it first
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

        self._call(f"s3://{self.bucket}", create_if_missing)
        self._bucket_checked = True

    def put_stream(self, key: str, stream: BinaryIO, length: int) -> str:
        uri = self.key_uri(key)
        self._ensure_bucket()
        self._call(
            uri,
            self._client.put_object,
            self.bucket,
            self._key(key),
            stream,
            length,
            part_size=self.PART_SIZE,
        )
        return uri

    def _download(self, key: str, out: BinaryIO) -> None:
        response = self._client.get_object(self.bucket, self._key(key))
        try:
            for chunk in response.stream(1 << 20):
                out.write(chunk)
        finally:
            response.close()
            response.release_conn()

    def open_read(self, key: str) -> BinaryIO:
        buf = io.BytesIO()
        self._call(self.key_uri(key), self._download, key, buf)
        buf.seek(0)
        return buf

    def get_file(self, key: str, path: str | os.PathLike[str]) -> Path:
        uri = self.key_uri(key)
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                self._call(uri, self._download, key, out)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return dest

    def exists(self, key: str) -> bool:
        try:
            self._call(self.key_uri(key), self._client.stat_object, self.bucket, self._key(key))
        except ObjectNotFound:
            return False
        return True

    def size(self, key: str) -> int:
        stat = self._call(self.key_uri(key), self._client.stat_object, self.bucket, self._key(key))
        return int(stat.size)

    def list(self, prefix: str = "") -> builtins.list[str]:
        full = (self.prefix + "/" if self.prefix else "") + prefix
        strip = len(self.prefix) + 1 if self.prefix else 0

        def names() -> builtins.list[str]:
            objects = self._client.list_objects(self.bucket, prefix=full, recursive=True)
            return [obj.object_name[strip:] for obj in objects]

        try:
            return sorted(self._call(f"{self.uri}/{prefix}" if prefix else self.uri, names))
        except ObjectNotFound:
            return []

    def delete(self, key: str) -> None:
        with contextlib.suppress(ObjectNotFound):
            self._call(self.key_uri(key), self._client.remove_object, self.bucket, self._key(key))


# Fail fast on a dead endpoint (a few quick retries) instead of the SDK's 5-minute timeouts.
_S3_CONNECT_TIMEOUT_S = 10.0
_S3_READ_TIMEOUT_S = 300.0
_S3_RETRIES = 3
# S3 error codes that say "try again later" (a retry of the step may succeed)
_S3_TRANSIENT_CODES = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "ServerBusy"}
)


def _minio_client_from_env(env: Mapping[str, str]) -> Any:
    import certifi
    import urllib3
    from minio import Minio

    endpoint = env.get("ARGOFL_S3_ENDPOINT", "")
    if not endpoint:
        raise StoreError(
            "ARGOFL_S3_ENDPOINT is not set: an s3:// store needs an endpoint such as http://minio.argofl:9000"
        )
    try:
        parsed: urllib.parse.ParseResult | None = urllib.parse.urlparse(
            endpoint if "://" in endpoint else f"http://{endpoint}"
        )
    except ValueError:  # an unclosed IPv6 bracket: http://[::1
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise StoreError(f"ARGOFL_S3_ENDPOINT={endpoint!r} is not an http(s)://HOST[:PORT] endpoint")
    if parsed.path.strip("/"):
        raise StoreError(f"ARGOFL_S3_ENDPOINT={endpoint!r} has a path; give only http(s)://HOST[:PORT]")
    try:
        parsed.port  # noqa: B018 (raises ValueError for a port that is no number in 0-65535)
    except ValueError as exc:
        raise StoreError(
            f"ARGOFL_S3_ENDPOINT={endpoint!r} has no valid port ({exc}): give http(s)://HOST[:PORT]"
        ) from None
    access = env.get("ARGOFL_S3_ACCESS_KEY") or env.get("AWS_ACCESS_KEY_ID")
    secret = env.get("ARGOFL_S3_SECRET_KEY") or env.get("AWS_SECRET_ACCESS_KEY")
    if not access or not secret:
        raise StoreError(
            f"S3 credentials for {endpoint} are not set: export ARGOFL_S3_ACCESS_KEY and "
            "ARGOFL_S3_SECRET_KEY (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        )
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=_S3_CONNECT_TIMEOUT_S, read=_S3_READ_TIMEOUT_S),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=env.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(total=_S3_RETRIES, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )
    return Minio(
        parsed.netloc,
        access_key=access,
        secret_key=secret,
        secure=parsed.scheme == "https",
        region=env.get("ARGOFL_S3_REGION") or None,
        http_client=http,
    )


_STORE_URIS = "file:///path, s3://bucket/prefix or minio://bucket/prefix"


def open_store(uri: str, env: Mapping[str, str] | None = None) -> Store:
    """Open the store at ``uri`` (``file://``, a plain path, ``s3://`` or ``minio://``); an S3 store reads
    ``ARGOFL_S3_*`` from ``env`` (default: the process environment)."""
    parsed = check_store_uri(uri)
    if parsed.scheme in ("s3", "minio"):
        return S3Store(parsed.netloc, parsed.path, env=env)
    if parsed.scheme == "file":
        return FileStore(urllib.parse.unquote(parsed.path))
    return FileStore(uri)


def check_store_uri(uri: str) -> urllib.parse.ParseResult:
    """Refuse (StoreError) a store URI that :func:`open_store` cannot open, without opening it."""
    parsed = _parse(uri)
    if parsed.scheme in ("s3", "minio"):
        if not parsed.netloc:
            raise StoreError(f"store URI {uri!r} names no bucket (expected s3://BUCKET[/PREFIX])")
        return parsed
    _check_local(uri, parsed)
    return parsed


def _parse(uri: str) -> urllib.parse.ParseResult:
    """``uri`` parsed; a StoreError for one that is no URI (an unclosed IPv6 bracket: ``s3://[x``)."""
    try:
        return urllib.parse.urlparse(uri)
    except ValueError as exc:
        raise StoreError(f"store URI {uri!r} is not a valid URI ({exc}): use {_STORE_URIS}") from None


def _check_local(uri: str, parsed: urllib.parse.ParseResult) -> None:
    """Refuse ``uri`` unless it is a plain path or a ``file:`` URI of this machine."""
    if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
        raise StoreError(f"store URI {uri!r}: file URIs must be file:///absolute/path")
    if parsed.scheme not in ("", "file") or not uri:
        raise StoreError(f"unsupported store URI {uri!r}: use {_STORE_URIS}")


def open_uri(uri: str) -> tuple[Store, str]:
    """Split an object URI such as ``s3://bucket/a/b.json`` into (store at its root, key)."""
    parsed = _parse(uri)
    if parsed.scheme in ("s3", "minio"):
        return open_store(f"{parsed.scheme}://{parsed.netloc}"), parsed.path.lstrip("/")
    _check_local(uri, parsed)  # gs://b/x is no local path named gs:/b/x
    path = Path(urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else uri)
    return FileStore(path.parent), path.name
