"""Bearer-token authentication as a grpc.aio server interceptor.

Tokens come from a file (one per line, as a mounted Kubernetes secret gives them; re-read when the file
changes, so a rotated secret needs no restart) and/or a comma-separated string (``STYLETX_AUTH_TOKENS``).
A call without ``authorization: Bearer <token>`` naming one of them ends with UNAUTHENTICATED before its
request is even parsed. Health checks and reflection stay open: kubelet probes and load balancers carry no
token, and neither reveals anything a client could not learn from the .proto.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc

__all__ = ["OPEN_METHOD_PREFIXES", "BearerTokenInterceptor", "TokenStore", "parse_tokens"]

_LOGGER = logging.getLogger(__name__)

#: Methods anyone may call (prefixes of ``/package.Service/Method``).
OPEN_METHOD_PREFIXES: tuple[str, ...] = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
_SCHEME = "bearer "


def parse_tokens(text: str, separators: str = ",\n") -> list[str]:
    """Tokens in ``text``, split at any of ``separators``; blanks and ``#`` comment lines are skipped."""
    for separator in separators[1:]:
        text = text.replace(separator, separators[0])
    tokens = [t.strip() for t in text.split(separators[0])]
    return [t for t in tokens if t and not t.startswith("#")]


def _digest(token: str) -> bytes:
    # Comparing fixed-length digests keeps even the token's length out of the timing.
    return hashlib.sha256(token.encode()).digest()


class TokenStore:
    """The accepted tokens: ``static`` ones plus those in ``path``, which is re-read when its mtime changes."""

    def __init__(self, static: Iterable[str] = (), path: str | os.PathLike[str] | None = None) -> None:
        self._static = [_digest(t) for t in static]
        self._path = Path(path) if path else None
        self._stamp: tuple[int, int] | None = None
        self._from_file: list[bytes] = []
        self._lock = threading.Lock()
        self._refresh()
        if not self._static and not self._from_file:
            raise ValueError("authentication is on but no token is configured (empty file and variable)")

    def _refresh(self) -> None:
        if self._path is None:
            return
        try:
            status = self._path.stat()  # follows the ..data symlink a Kubernetes secret mount swaps
        except OSError as error:
            if self._stamp is None:  # at start-up a missing file is a configuration error
                raise ValueError(f"cannot read the token file {self._path}: {error.strerror}") from None
            _LOGGER.warning("token file %s is unreadable; keeping the tokens read before", self._path)
            return
        stamp = (status.st_mtime_ns, status.st_ino)
        if stamp != self._stamp:
            self._from_file = [_digest(t) for t in parse_tokens(self._path.read_text())]
            if self._stamp is not None:
                _LOGGER.info("token file %s changed: %d token(s)", self._path, len(self._from_file))
            self._stamp = stamp

    def accepts(self, token: str) -> bool:
        """Constant-time membership: every stored digest is compared, whatever matched before."""
        with self._lock:
            self._refresh()
            candidates = self._static + self._from_file
        given = _digest(token)
        matched = False
        for digest in candidates:
            matched |= hmac.compare_digest(given, digest)
        return matched


def _bearer(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value[:len(_SCHEME)].lower() == _SCHEME:
            return value[len(_SCHEME):].strip()
    return None


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Lets a call through when it carries an accepted bearer token or calls an open method."""

    def __init__(self, store: TokenStore, open_prefixes: tuple[str, ...] = OPEN_METHOD_PREFIXES) -> None:
        self._store = store
        self._open = open_prefixes

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(self._open):
            return handler
        token = _bearer(handler_call_details.invocation_metadata)
        if token is not None and self._store.accepts(token):
            return handler
        _LOGGER.warning("refused %s: %s bearer token", method, "no" if token is None else "unknown")
        message = "missing bearer token" if token is None else "invalid bearer token"
        return _deny(handler, message)


def _deny(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that ends the call with UNAUTHENTICATED.

    No request deserializer: an unauthenticated request is never parsed.
    """

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator, as a streaming handler must be

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(stream)
    return grpc.unary_unary_rpc_method_handler(unary)
