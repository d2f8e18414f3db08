"""Errors that map to an HTTP status and a one-line message a client can act on.

Every failure the core can anticipate is a ``ModelshipError``; the doors turn it into
``{"error": message}`` with ``status``. Anything else is a bug and becomes a 500 without a traceback.
"""

from __future__ import annotations


class ModelshipError(Exception):
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ModelshipError):
    status = 400


class NotFound(ModelshipError):
    status = 404


class MethodNotAllowed(ModelshipError):
    status = 405

    def __init__(self, message: str, allowed: tuple[str, ...]) -> None:
        super().__init__(message)
        self.allowed = allowed


class Conflict(ModelshipError):
    status = 409


class PayloadTooLarge(ModelshipError):
    status = 413


class DeadlineExceeded(ModelshipError):
    """A run passed its deadline and was stopped."""

    status = 504


class ModelUnavailable(ModelshipError):
    """The model exists but cannot be served: integrity failure, unloadable graph, store outage."""

    status = 503


class IntegrityError(ModelUnavailable):
    """The artifact's bytes do not match its manifest; it is never handed to onnxruntime."""


class InvalidModel(ModelshipError):
    """A model offered to ``push`` that onnxruntime cannot load or we cannot serve."""

    status = 400
