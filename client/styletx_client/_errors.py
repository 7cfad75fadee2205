"""The SDK's one exception type. Every failed call raises :class:`StyletxError` ``from None``: callers see the
status code, the server's message and its hints, not a chain of gRPC internals."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc

__all__ = ["StyletxError", "from_rpc_error", "unreachable"]


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


#: Failures of the connection itself (no answer from a styletx server), as gRPC reports them.
_UNREACHABLE = ("failed to connect", "connection refused", "dns", "resolution", "resolve", "settings frame",
                "socket closed", "handshake", "ssl", "tls", "connection reset", "connections to all backends")


def from_rpc_error(error: Any, target: str | None = None) -> StyletxError:
    """A gRPC error, or an error with a gRPC ``code`` (the in-process backend's), as StyletxError.

    A call that never reached a styletx server at ``target`` (refused, unresolvable, TLS mismatch, a port that
    speaks HTTP/1 such as the metrics port) becomes one line naming the address and what to check.
    """
    if isinstance(error, StyletxError):
        return error
    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        code = error.code()
        metadata = error.trailing_metadata() or () if hasattr(error, "trailing_metadata") else ()
        details = {k: v for k, v in metadata if isinstance(v, str)}
        message = error.details() or code.name
        if target and code == grpc.StatusCode.UNAVAILABLE and any(m in message.lower() for m in _UNREACHABLE):
            message = unreachable(target, message)
        return StyletxError(code, message, details)
    code = getattr(error, "code", None)
    if isinstance(code, grpc.StatusCode):  # server.errors.ServiceError from the local backend
        return StyletxError(code, str(getattr(error, "message", error)), getattr(error, "details", {}))
    return StyletxError(grpc.StatusCode.UNKNOWN, f"{type(error).__name__}: {error}")


def unreachable(target: str, detail: str) -> str:
    """``cannot reach HOST:PORT (...) — is styletx-server running there? ...``: what to check, in one line."""
    reason = " ".join(detail.split())
    reason = reason if len(reason) <= 160 else reason[:157] + "..."
    return (f"cannot reach {target} ({reason}) — is styletx-server running there, on this port (the gRPC port, "
            "not the metrics port)? TLS on the server but not here (--tls), or the reverse?")
