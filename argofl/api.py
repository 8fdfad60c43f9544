"""argofl's public Python API: see :mod:`argofl.pipelines.api` (re-exported here)."""

from argofl.pipelines.api import (
    ApiError,
    ExperimentConfig,
    build,
    compile_config,
    load_config,
    run_local,
    save,
    submit,
    to_manifest,
)

__all__ = [
    "ApiError",
    "ExperimentConfig",
    "build",
    "compile_config",
    "load_config",
    "run_local",
    "save",
    "submit",
    "to_manifest",
]
