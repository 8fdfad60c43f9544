"""argofl's public Python API: :mod:`argofl.pipelines.api`, re-exported (``import argofl`` has it too)."""

from argofl.pipelines.api import *  # noqa: F403
from argofl.pipelines.api import __all__ as __all__
