"""The asyncio client: the same method names as :class:`client.Client`, awaitable."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import wrappers_pb2
from styletx_proto.v1 import styletx_pb2 as pb
from styletx_proto.v1 import styletx_pb2_grpc as pb_grpc

from ._client import _HEALTH, CANCEL_METADATA, DEFAULT_TIMEOUT, keyed
from ._errors import StyletxError, from_rpc_error
from ._events import AsyncEventStream, Event, ResultAssembler, Resumption, StylizeOutput
from ._options import (
    DEFAULT_KEEPALIVE,
    DEFAULT_RETRY,
    KeepAliveOptions,
    RetryPolicy,
    TLSOptions,
    auth_metadata,
    channel_options,
    connection,
)
from ._request import ImageInput, JobOptions, Styles, build_request

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["AsyncClient"]


class AsyncClient:
    """asyncio twin of :class:`client.Client` (same parameters, same method names)."""

    def __init__(self, target: str | None = None, *, tls: TLSOptions | None = None,
                 keepalive: KeepAliveOptions | None = DEFAULT_KEEPALIVE,
                 retry: RetryPolicy | None = DEFAULT_RETRY,
                 load_balancing: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 max_receive_bytes: int = 4 * 1024 * 1024, token: str | None = None) -> None:
        address, tls = connection(target, tls)
        options = channel_options(keepalive, retry, load_balancing, tls, max_receive_bytes)
        self._metadata = auth_metadata(token)
        self._channel = grpc.aio.secure_channel(address, tls.credentials(), options) if tls else \
            grpc.aio.insecure_channel(address, options)
        self._stub = pb_grpc.StyleTransferStub(self._channel)
        self._health = self._channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=wrappers_pb2.StringValue.SerializeToString,
            response_deserializer=wrappers_pb2.Int32Value.FromString)
        self.target = address
        self.timeout = timeout
        self._background: set[asyncio.Future[None]] = set()

    def stream_request(self, request: pb.StylizeRequest, *, timeout: float | None = None) -> AsyncEventStream:
        """Send a prepared request, keyed and resumed like :meth:`Client.stream_request`."""
        request = keyed(request)
        deadline = time.monotonic() + (timeout or self.timeout)

        def call() -> Any:
            return self._stub.Stylize(request, timeout=max(0.001, deadline - time.monotonic()),
                                      metadata=self._metadata)

        async def cancel_job() -> None:
            metadata = (*(self._metadata or ()), (CANCEL_METADATA, "1"))
            with contextlib.suppress(grpc.RpcError):
                async for _ in self._stub.Stylize(pb.StylizeRequest(request_id=request.request_id), timeout=5,
                                                  metadata=metadata):
                    pass

        def cancel() -> None:
            self._background.add(task := asyncio.ensure_future(cancel_job()))
            task.add_done_callback(self._background.discard)

        return AsyncEventStream(call(), Resumption(call, deadline, cancel_job=cancel), self.target)

    def stylize_stream(self, content: ImageInput, styles: Styles, *,
                       timeout: float | None = None, **options: Unpack[JobOptions]) -> AsyncEventStream:
        """Start a job; ``async for`` the stream's events, ``.cancel()`` it to stop the job."""
        return self.stream_request(build_request(content, styles, **options), timeout=timeout)

    async def stylize(self, content: ImageInput, styles: Styles, *,
                      timeout: float | None = None, on_event: Callable[[Event], None] | None = None,
                      **options: Unpack[JobOptions]) -> StylizeOutput:
        """Run a job to the end; returns the image and its metrics."""
        stream = self.stylize_stream(content, styles, timeout=timeout, **options)
        assembler = ResultAssembler()
        try:
            async for event in stream:
                if on_event is not None:
                    on_event(event)
                output = assembler.add(event)
                if output is not None:
                    return output
        except BaseException:
            stream.cancel()
            raise
        raise StyletxError(grpc.StatusCode.DATA_LOSS, "the stream ended before Completed")

    async def server_info(self, *, timeout: float | None = 30.0) -> pb.GetServerInfoResponse:
        try:
            response: pb.GetServerInfoResponse = await self._stub.GetServerInfo(
                pb.GetServerInfoRequest(), metadata=self._metadata, timeout=timeout)
        except grpc.RpcError as error:
            raise from_rpc_error(error, self.target) from None
        return response

    async def health(self, service: str = "", *, timeout: float | None = 10.0) -> str:
        try:
            reply = await self._health(wrappers_pb2.StringValue(value=service), timeout=timeout)
        except grpc.RpcError as error:
            raise from_rpc_error(error, self.target) from None
        return _HEALTH[reply.value] if 0 <= reply.value < len(_HEALTH) else str(reply.value)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
