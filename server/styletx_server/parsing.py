"""Requests that do not parse (invalid UTF-8 in a string field, truncated bytes) answer INTERNAL with one log line.

Left to grpc, a message that fails to deserialize raises inside grpc's handler machinery: the call ends
UNKNOWN ("Unexpected [DecodeError]") and every such request logs a full traceback. gRPC's status-code table
gives "error parsing request proto" the code INTERNAL, so :class:`ParseGuard` deserializes itself, turns a
failure into an :class:`Unparsable` placeholder, and the wrapped method answers INTERNAL naming the field at
fault (found by walking the wire format) — logged once per request, rate-limited (:mod:`.ratelog`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError

from .errors import ServiceError
from .ratelog import RateLimitedLog

__all__ = ["ParseGuard", "Unparsable", "find_bad_string"]

_LOGGER = logging.getLogger(__name__)
_LOG = RateLimitedLog(_LOGGER)


@dataclass(frozen=True)
class Unparsable:
    """What the guarded deserializer returns for bytes that are not a valid message of ``descriptor``."""

    descriptor: Descriptor
    data: bytes
    reason: str

    def error(self, prefix: str = "") -> ServiceError:
        """INTERNAL (gRPC's code for an unparsable request), naming the field when one is at fault."""
        field = find_bad_string(self.descriptor, self.data)
        what = f"{prefix}{field}: is not valid UTF-8" if field else f"{prefix or 'request'}: {self.reason}"
        return ServiceError(grpc.StatusCode.INTERNAL,
                            f"cannot parse {self.descriptor.full_name}: {what}", field=(prefix + field) or None)


def _safe(deserializer: Callable[[bytes], Any], descriptor: Descriptor) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as error:
            return Unparsable(descriptor, data, str(error) or "not a valid protobuf message")

    return deserialize


class ParseGuard(grpc.aio.ServerInterceptor):
    """Guards the deserialization of every method of ``services`` (``{full method name: request type}``)."""

    def __init__(self, request_types: dict[str, Descriptor]) -> None:
        self._types = request_types

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        descriptor = self._types.get(handler_call_details.method)
        if handler is None or descriptor is None or handler.request_deserializer is None:
            return handler
        codec = {"request_deserializer": _safe(handler.request_deserializer, descriptor),
                 "response_serializer": handler.response_serializer}
        method = handler_call_details.method
        if handler.request_streaming:
            inner = handler.stream_stream if handler.response_streaming else handler.stream_unary
            make = grpc.stream_stream_rpc_method_handler if handler.response_streaming \
                else grpc.stream_unary_rpc_method_handler
            return make(_streaming(inner, method, handler.response_streaming), **codec)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(_unary_stream(handler.unary_stream, method), **codec)
        return grpc.unary_unary_rpc_method_handler(_unary_unary(handler.unary_unary, method), **codec)


async def _refuse(context: grpc.aio.ServicerContext, method: str, error: ServiceError) -> None:
    _LOG.log(logging.WARNING, "refused %s from %s: %s", method, context.peer(), error.message)
    await context.abort(error.code, error.message)


def _unary_unary(behaviour: Any, method: str) -> Any:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Unparsable):
            await _refuse(context, method, request.error())
        return await behaviour(request, context)

    return guarded


def _unary_stream(behaviour: Any, method: str) -> Any:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if isinstance(request, Unparsable):
            await _refuse(context, method, request.error())
        async for response in behaviour(request, context):
            yield response

    return guarded


def _streaming(behaviour: Any, method: str, response_streaming: bool) -> Any:
    """A request stream stops at its first unparsable message: the method sees a ServiceError from its
    iterator, which it reports like any bad message (the StylizeVideo reader does)."""

    async def checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        index = 0
        async for request in requests:
            if isinstance(request, Unparsable):
                error = request.error(f"messages[{index}].")
                _LOG.log(logging.WARNING, "refused %s: %s", method, error.message)
                raise error
            index += 1
            yield request

    if response_streaming:
        async def guarded_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for response in behaviour(checked(requests), context):
                yield response

        return guarded_stream

    async def guarded_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        return await behaviour(checked(requests), context)

    return guarded_unary


def find_bad_string(descriptor: Descriptor, data: bytes, prefix: str = "") -> str:
    """The path (``params.content_layers[1]``) of the first string field holding invalid UTF-8, or ""."""
    counts: dict[int, int] = {}
    position = 0
    try:
        while position < len(data):
            tag, position = _varint(data, position)
            number, wire = tag >> 3, tag & 7
            if wire != 2:
                position = _skip(data, position, wire)
                continue
            length, position = _varint(data, position)
            value = data[position:position + length]
            position += length
            field = descriptor.fields_by_number.get(number)
            if field is None:
                continue
            index = counts.get(number, 0)
            counts[number] = index + 1
            name = f"{prefix}{field.name}" + (f"[{index}]" if field.is_repeated else "")
            if field.type == FieldDescriptor.TYPE_STRING:
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError:
                    return name
            elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
                found = find_bad_string(field.message_type, value, name + ".")
                if found:
                    return found
    except (IndexError, ValueError):
        return ""
    return ""


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _skip(data: bytes, position: int, wire: int) -> int:
    if wire == 0:
        return _varint(data, position)[1]
    if wire == 1:
        return position + 8
    if wire == 5:
        return position + 4
    raise ValueError(f"unsupported wire type {wire}")
