"""The SDK's one exception type. Every failed call raises :class:`StyletxError` ``from None``: callers see the
status code, the server's message and its hints, not a chain of gRPC internals."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc

__all__ = ["StyletxError", "from_rpc_error"]


class StyletxError(Exception):
    """A call failed.

    Attributes
    ----------
    code : grpc.StatusCode
        The status (``INVALID_ARGUMENT``, ``RESOURCE_EXHAUSTED``, ``DEADLINE_EXCEEDED`` …).
    message : str
        The server's message; for ``INVALID_ARGUMENT`` it starts with the request field at fault.
    details : dict
        The server's hints from the trailing metadata: ``styletx-field``, ``retry-after-ms``.
    """

    def __init__(self, code: grpc.StatusCode, message: str, details: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.details = dict(details or {})

    @property
    def field(self) -> str | None:
        """The request field at fault (``params.size``), for INVALID_ARGUMENT."""
        return self.details.get("styletx-field")

    @property
    def retry_after(self) -> float | None:
        """Seconds the server suggests waiting before a retry (RESOURCE_EXHAUSTED)."""
        value = self.details.get("retry-after-ms")
        return int(value) / 1000 if value else None


def from_rpc_error(error: Any) -> StyletxError:
    """A gRPC error, or an error with a gRPC ``code`` (the in-process backend's), as StyletxError."""
    if isinstance(error, StyletxError):
        return error
    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        code = error.code()
        metadata = error.trailing_metadata() or () if hasattr(error, "trailing_metadata") else ()
        details = {k: v for k, v in metadata if isinstance(v, str)}
        return StyletxError(code, error.details() or code.name, details)
    code = getattr(error, "code", None)
    if isinstance(code, grpc.StatusCode):  # server.errors.ServiceError from the local backend
        return StyletxError(code, str(getattr(error, "message", error)), getattr(error, "details", {}))
    return StyletxError(grpc.StatusCode.UNKNOWN, f"{type(error).__name__}: {error}")
