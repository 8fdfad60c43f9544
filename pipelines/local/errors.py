"""Exceptions raised by the local executor before or while it runs a workflow."""

from __future__ import annotations

from argofl.steps.errors import ArgoflError, BadInputError

__all__ = ["ExpressionError", "LocalExecutorError", "UnsupportedWorkflow", "WorkflowInputError"]


class LocalExecutorError(ArgoflError):
    """Base class of every error the local executor raises to its caller."""


class UnsupportedWorkflow(LocalExecutorError, BadInputError):
    """The manifest uses a field the local executor cannot honour; raised before anything runs."""


class WorkflowInputError(LocalExecutorError, BadInputError):
    """Bad parameters, a malformed manifest or a bad expression."""


class ExpressionError(WorkflowInputError):
    """An expression (``when``, ``depends``, ``{{=...}}``, ``retryStrategy.expression``) failed."""
