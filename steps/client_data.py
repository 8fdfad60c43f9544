"""Where each client's data comes from: the ``data:`` section of a config and the readers behind it.

```yaml
data:
  source: per-client                 # partition (default) | per-client | loader
  uri: s3://site-data/{client}/      # per-client: holds train.safetensors and, optionally, test.safetensors
  loader: mypkg.sites:load_client    # loader: fn(client: str, split: str) -> (x, y) or None
  central_eval: auto                 # auto (on for partition, off otherwise) | dataset | off
  federated_eval: auto               # auto (clients with a test split evaluate the incoming model) | off
```

A shard is a safetensors file of two named arrays: ``x`` uint8 (N, H, W, C) images and ``y`` int64 (N,)
labels in ``[0, num_classes)`` — framework-neutral, never pickle. Shards are checked on read (names,
dtypes, shapes against the model's input, label range, size) and every problem is a
:class:`ClientDataError`: one line naming the client and the location. ``$ARGOFL_DATA_S3_ENDPOINT``,
``$ARGOFL_DATA_S3_ACCESS_KEY`` and ``$ARGOFL_DATA_S3_SECRET_KEY`` (the client's own Secret on a cluster),
when set, are the credentials for ``s3://`` shards instead of the run store's.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from argofl.steps.errors import BadInputError
from argofl.steps.mapping import dataclass_from_mapping
from argofl.steps.settings import Settings, SettingsError

if TYPE_CHECKING:
    from argofl.steps.store import Store

__all__ = [
    "CLIENT_PLACEHOLDER",
    "DATASET_SHAPES",
    "SOURCES",
    "ClientData",
    "ClientDataError",
    "DataOptions",
    "client_data",
    "client_example_count",
    "client_train_data",
    "model_shape",
    "read_shard",
    "remove_shard",
    "shard_clients",
    "shard_exists",
    "shard_uri",
    "validate_arrays",
    "write_shard",
]

SOURCES = ("partition", "per-client", "loader")
CLIENT_PLACEHOLDER = "{client}"
DATASET_SHAPES: dict[str, tuple[tuple[int, int, int], int]] = {
    "fashion-mnist": ((28, 28, 1), 10),
    "mnist": ((28, 28, 1), 10),
    "cifar10": ((32, 32, 3), 10),
}
"""Input shape (H, W, C) and classes of the model for each ``dataset`` setting."""

DATA_ENV = {
    "ARGOFL_S3_ENDPOINT": "ARGOFL_DATA_S3_ENDPOINT",
    "ARGOFL_S3_ACCESS_KEY": "ARGOFL_DATA_S3_ACCESS_KEY",
    "ARGOFL_S3_SECRET_KEY": "ARGOFL_DATA_S3_SECRET_KEY",
}
"""Store variable → the variable that overrides it while a client's shards are read."""


class ClientDataError(BadInputError, ValueError):
    """A client's data is missing or invalid; the message names the client and the location."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


@dataclass(frozen=True)
class DataOptions:
    """Where clients get their data, and which evaluations a round runs."""

    source: str = "partition"
    uri: str = ""
    loader: str = ""
    central_eval: str = "auto"
    federated_eval: str = "auto"

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise SettingsError(f"data.source: must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.central_eval not in ("auto", "dataset", "off"):
            raise SettingsError(f"data.central_eval: must be auto, dataset or off, got {self.central_eval!r}")
        if self.federated_eval not in ("auto", "off"):
            raise SettingsError(f"data.federated_eval: must be auto or off, got {self.federated_eval!r}")
        if self.source == "per-client" and CLIENT_PLACEHOLDER not in self.uri:
            raise SettingsError(
                f"data.uri: source per-client needs a URI template with {CLIENT_PLACEHOLDER} "
                f"(e.g. s3://bucket/sites/{{client}}/), got {self.uri!r}"
            )
        if self.source == "loader" and not _is_ref(self.loader):
            raise SettingsError(
                f"data.loader: source loader needs a function 'package.module:function', got {self.loader!r}"
            )

    @property
    def central(self) -> bool:
        """Whether the round evaluates the global model on the dataset's test split."""
        return self.central_eval == "dataset" or (self.central_eval == "auto" and self.source == "partition")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, where: str, strings: bool = False) -> DataOptions:
        """Build options from a config's ``data:`` section (or ``data-*`` parameters when ``strings``)."""
        return dataclass_from_mapping(
            cls, values, where=where, error=SettingsError, prefix="data.", dashes=True, strings=strings
        )

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    def to_params(self) -> dict[str, str]:
        """Workflow parameter name (``data-central-eval``) → value."""
        return {"data-" + k.replace("_", "-"): v for k, v in self.to_dict().items()}


def _is_ref(value: str) -> bool:
    module, sep, attr = value.partition(":")
    return bool(sep and module and attr) and all(p.isidentifier() for p in [*module.split("."), attr])


@dataclass(frozen=True)
class ClientData:
    """One client's split: ``x`` uint8 (N, H, W, C), ``y`` int64 (N,), and where it came from."""

    x: np.ndarray
    y: np.ndarray
    location: str

    def __len__(self) -> int:
        return int(self.y.shape[0])


def model_shape(settings: Settings) -> tuple[tuple[int, int, int], int]:
    """The model's input shape and class count for the ``dataset`` setting."""
    return DATASET_SHAPES[settings.dataset]


# ------------------------------------------------------------------------------------------ shards


def shard_uri(template: str, client: str, split: str) -> str:
    """``s3://b/sites/{client}/`` → ``s3://b/sites/3/train.safetensors``."""
    base = template.replace(CLIENT_PLACEHOLDER, client)
    return f"{base.rstrip('/')}/{split}.safetensors"


@contextmanager
def _data_credentials() -> Iterator[None]:
    """While open: the ``ARGOFL_DATA_S3_*`` variables, where set, stand in for ``ARGOFL_S3_*``."""
    saved = {name: os.environ.get(name) for name in DATA_ENV}
    try:
        for name, override in DATA_ENV.items():
            if os.environ.get(override):
                os.environ[name] = os.environ[override]
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _open_shard(uri: str) -> tuple[Store, str]:
    """The store holding ``uri`` (opened with the clients' credentials) and the shard's key in it."""
    from argofl.steps.store import open_uri

    with _data_credentials():
        return open_uri(uri)


def shard_exists(uri: str) -> bool:
    """Whether a shard (any object) is at ``uri``."""
    store, key = _open_shard(uri)
    return store.exists(key)


def remove_shard(uri: str) -> None:
    """Remove the shard at ``uri`` (absent: nothing to do)."""
    store, key = _open_shard(uri)
    store.delete(key)


def shard_clients(template: str) -> list[int] | None:
    """The client ids with an object where ``template`` puts clients (``sites/3/…``), found by listing;
    None when ``{client}`` is in a bucket's name, where there is nothing to list."""
    head, _, _ = template.partition(CLIENT_PLACEHOLDER)
    store, key = _open_shard(head + "0")  # the store holding every client's place
    if not key.endswith("0"):
        return None
    prefix = key[:-1]
    found = (re.match(r"0|[1-9][0-9]*", k[len(prefix) :]) for k in store.list(prefix))
    return sorted({int(m.group()) for m in found if m})


def _read_bytes(uri: str) -> bytes | None:
    """The object at ``uri``, or None when it does not exist."""
    from argofl.steps.store import ObjectNotFound

    store, key = _open_shard(uri)
    try:
        return store.get_bytes(key)
    except ObjectNotFound:
        return None


def validate_arrays(
    x: Any, y: Any, *, client: str, where: str, input_shape: tuple[int, ...], num_classes: int
) -> ClientData:
    """Check one client's arrays against the model; ClientDataError naming the client and ``where``."""
    at = f"client {client}: {where}"
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        raise ClientDataError(
            f"{at}: expected numpy arrays x and y, got {type(x).__name__} and {type(y).__name__}"
        )
    if x.dtype != np.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != tuple(input_shape):
        raise ClientDataError(
            f"{at}: x must be uint8 (N, {', '.join(map(str, input_shape))}) images for the model, "
            f"got {x.dtype} {tuple(x.shape)}; the client is skipped this round"
        )
    if y.dtype != np.int64 or y.shape != (x.shape[0],):
        raise ClientDataError(
            f"{at}: y must be int64 ({x.shape[0]},) labels matching x, got {y.dtype} {tuple(y.shape)}; "
            "the client is skipped this round"
        )
    if x.shape[0] == 0:
        raise ClientDataError(f"{at}: the shard is empty (0 examples); the client is skipped this round")
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= num_classes:
        raise ClientDataError(
            f"{at}: labels in [{low}, {high}] exceed the model's {num_classes} outputs "
            f"(expected [0, {num_classes - 1}]); the client is skipped this round"
        )
    return ClientData(x=x, y=y, location=where)


def read_shard(
    uri: str, *, client: str, input_shape: tuple[int, ...], num_classes: int, required: bool = True
) -> ClientData | None:
    """Read and validate the shard at ``uri``; None if it is absent and not ``required``."""
    from argofl.steps.checkpoint import CheckpointError, decode_arrays
    from argofl.steps.store import StoreError

    try:
        data = _read_bytes(uri)
    except StoreError as exc:
        raise ClientDataError(f"client {client}: cannot read {uri}: {_one_line(exc)}") from None
    if data is None:
        if not required:
            return None
        raise ClientDataError(
            f"client {client}: no shard at {uri} (expected a safetensors file with x and y for this "
            "client); the client is skipped this round"
        )
    try:
        arrays = decode_arrays(data, where=uri)
    except CheckpointError as exc:
        raise ClientDataError(f"client {client}: {_one_line(exc)}") from None
    if set(arrays) != {"x", "y"}:
        raise ClientDataError(
            f"client {client}: {uri} holds tensors {sorted(arrays)}, expected exactly x and y"
        )
    return validate_arrays(
        arrays["x"], arrays["y"], client=client, where=uri, input_shape=input_shape, num_classes=num_classes
    )


def write_shard(uri: str, x: np.ndarray, y: np.ndarray) -> str:
    """Write ``x`` and ``y`` as a safetensors shard at ``uri``; returns the URI."""
    from argofl.steps.checkpoint import encode_arrays

    store, key = _open_shard(uri)
    store.put_bytes(key, encode_arrays({"x": np.ascontiguousarray(x), "y": np.ascontiguousarray(y)}))
    return uri


# ------------------------------------------------------------------------------------------- sources


@functools.lru_cache(maxsize=2)
def _partition_parts(settings: Settings, split: str) -> tuple[Any, list[np.ndarray]]:
    from argofl.steps.data import load_dataset
    from argofl.steps.partition import partition

    limit = (settings.data_limit or None) if split == "train" else None
    data = load_dataset(settings.dataset, split, settings.data_dir or None, limit=limit)
    parts = partition(data.y, settings.clients, settings.partition, alpha=settings.alpha, seed=settings.seed)
    return data, parts


def partition_split(settings: Settings, split: str, client: str) -> ClientData:
    """Client ``client``'s part of the dataset's ``split`` (the seeded partition of the settings)."""
    data, parts = _partition_parts(settings, split)
    idx = parts[int(client)]
    where = f"{settings.dataset} {split} partition {settings.partition} (seed {settings.seed})"
    return ClientData(x=data.x[idx], y=data.y[idx], location=where)


def _from_loader(ref: str, client: str, split: str, *, input_shape: tuple[int, ...], num_classes: int) -> Any:
    from argofl.steps.frameworks.base import FrameworkError, load_factory

    where = f"loader {ref}({client!r}, {split!r})"
    try:
        fn = load_factory(ref, what="data loader")
    except FrameworkError as exc:
        raise ClientDataError(
            f"client {client}: {where}: {_one_line(exc)}; the client is skipped this round"
        ) from None
    try:
        result = fn(client, split)
    except Exception as exc:
        raise ClientDataError(
            f"client {client}: {where} raised {type(exc).__name__}: {_one_line(exc)}; "
            "the client is skipped this round"
        ) from None
    if result is None:
        return None
    if not isinstance(result, tuple | list) or len(result) != 2:
        raise ClientDataError(
            f"client {client}: {where} returned {type(result).__name__}, expected a tuple (x, y) or None"
        )
    x, y = result
    return validate_arrays(x, y, client=client, where=where, input_shape=input_shape, num_classes=num_classes)


def client_data(settings: Settings, options: DataOptions, client: str, split: str) -> ClientData | None:
    """Client ``client``'s ``split`` (train or test) from the configured source.

    The train split must exist (ClientDataError otherwise); a missing test split is None. The
    ``partition`` source has no per-client test split.
    """
    input_shape, num_classes = model_shape(settings)
    required = split == "train"
    if options.source == "partition":
        return partition_split(settings, split, client) if required else None
    if options.source == "per-client":
        uri = shard_uri(options.uri, client, split)
        return read_shard(
            uri, client=client, input_shape=input_shape, num_classes=num_classes, required=required
        )
    data = _from_loader(options.loader, client, split, input_shape=input_shape, num_classes=num_classes)
    if data is None and required:
        raise ClientDataError(
            f"client {client}: loader {options.loader}({client!r}, 'train') returned None: every client "
            "needs a train split; the client is skipped this round"
        )
    return data


def client_train_data(settings: Settings, options: DataOptions, client: str) -> ClientData:
    """Client ``client``'s train split; ClientDataError when it has none."""
    data = client_data(settings, options, client, "train")
    if data is None:
        raise ClientDataError(f"client {client}: no train split from source {options.source}")
    return data


def client_example_count(settings: Settings, options: DataOptions, client: str) -> int:
    """How many training examples client ``client`` holds (its partition or its train shard)."""
    if options.source == "partition":
        return len(_partition_parts(settings, "train")[1][int(client)])
    return len(client_train_data(settings, options, client))
