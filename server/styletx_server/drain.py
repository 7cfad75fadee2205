"""Counting the calls a drain must wait for, so that a stop does not wait for the ones that never end.

``grpc.aio.Server.stop(grace)`` waits for *every* open call, and a health ``Watch`` stream (kubelet, Envoy,
a test) stays open until it is cancelled: every drain would take the whole grace period. This interceptor
counts the calls of the services that do work (``styletx.v1.StyleTransfer``); the server waits for those
alone, then stops with no grace for the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

__all__ = ["InFlightCalls"]


class InFlightCalls(grpc.aio.ServerInterceptor):
    """Counts open calls whose method starts with one of ``prefixes``; :meth:`wait_idle` waits for none."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        self._prefixes = prefixes
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """True when no counted call is open (now or within ``timeout`` seconds)."""
        try:
            await asyncio.wait_for(self._idle.wait(), max(timeout, 0.0))
        except TimeoutError:
            return False
        return True

    def _enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def _exit(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self._prefixes):
            return handler
        return self._wrap(handler)

    def _wrap(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        codec = {"request_deserializer": handler.request_deserializer,
                 "response_serializer": handler.response_serializer}
        if handler.response_streaming:
            behaviour = handler.stream_stream if handler.request_streaming else handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                self._enter()
                try:
                    async for response in behaviour(request, context):
                        yield response
                finally:
                    self._exit()

            make = grpc.stream_stream_rpc_method_handler if handler.request_streaming \
                else grpc.unary_stream_rpc_method_handler
            return make(stream, **codec)
        unary_behaviour = handler.stream_unary if handler.request_streaming else handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self._enter()
            try:
                return await unary_behaviour(request, context)
            finally:
                self._exit()

        make_unary = grpc.stream_unary_rpc_method_handler if handler.request_streaming \
            else grpc.unary_unary_rpc_method_handler
        return make_unary(unary, **codec)
