"""The synchronous client, and the in-process client that the CLI uses without ``--server``."""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import wrappers_pb2
from styletx_proto.v1 import styletx_pb2 as pb
from styletx_proto.v1 import styletx_pb2_grpc as pb_grpc

from ._errors import StyletxError, from_rpc_error
from ._events import Event, EventStream, Resumption, StylizeOutput, collect
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

__all__ = ["DEFAULT_TIMEOUT", "Client", "LocalClient", "stylize"]

_LOGGER = logging.getLogger(__name__)
DEFAULT_TIMEOUT = 3600.0
"""Seconds a job may take by default, queueing included (every call also takes ``timeout=``)."""
#: Metadata of the call that cancels a keyed job (the server's ``idempotency.CANCEL_METADATA``).
CANCEL_METADATA = "styletx-cancel"
_HEALTH = ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")


class _Stylizer:
    """``stylize`` and ``stylize_stream`` on top of a subclass's ``stream_request``."""

    timeout: float

    def stream_request(self, request: pb.StylizeRequest, *, timeout: float | None = None) -> EventStream:
        raise NotImplementedError

    def stylize_stream(self, content: ImageInput, styles: Styles, *,
                       timeout: float | None = None, **options: Unpack[JobOptions]) -> EventStream:
        """Start a job; iterate the returned stream for typed events, ``.cancel()`` it to stop the job.

        ``styles`` is one style or a sequence (``(image, weight)`` for a blend weight); ``options`` are
        :class:`JobOptions` (``size=512, optimizer="adam", seed=1``), typed and documented from the proto.
        Calling ``.cancel()`` inside ``for event in stream`` stops the job and ends the iteration cleanly.
        """
        return self.stream_request(build_request(content, styles, **options), timeout=timeout)

    def stylize(self, content: ImageInput, styles: Styles, *, timeout: float | None = None,
                on_event: Callable[[Event], None] | None = None, **options: Unpack[JobOptions]) -> StylizeOutput:
        """Run a job to the end and return the image and its metrics; ``on_event`` sees every event."""
        stream = self.stylize_stream(content, styles, timeout=timeout, **options)
        try:
            return collect(stream, on_event)
        except BaseException:
            stream.cancel()
            raise


class Client(_Stylizer):
    """A styletx server's client. Method names match :class:`AsyncClient`.

    Parameters
    ----------
    target : str, optional
        ``host[:port]`` (port default 50051; ``grpc://``/``http://`` are stripped, ``https://`` turns on TLS);
        ``dns:///host:port`` with ``load_balancing="round_robin"`` spreads jobs over replicas. Default: the
        environment's ``STYLETX_SERVER``, else ``localhost``.
    tls : TLSOptions, optional
        Use TLS (else plaintext).
    keepalive, retry : KeepAliveOptions, RetryPolicy, optional
        Connection pings; retries of UNAVAILABLE / RESOURCE_EXHAUSTED with backoff (None: no retries).
    load_balancing : str, optional
        gRPC LB policy name, e.g. ``"round_robin"``.
    timeout : float
        Default deadline of every call, in seconds.
    token : str, optional
        Bearer token for a server that requires one (sent as ``authorization`` metadata; use with TLS).
    """

    def __init__(self, target: str | None = None, *, tls: TLSOptions | None = None,
                 keepalive: KeepAliveOptions | None = DEFAULT_KEEPALIVE,
                 retry: RetryPolicy | None = DEFAULT_RETRY,
                 load_balancing: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 max_receive_bytes: int = 4 * 1024 * 1024, token: str | None = None) -> None:
        address, tls = connection(target, tls)
        options = channel_options(keepalive, retry, load_balancing, tls, max_receive_bytes)
        self._metadata = auth_metadata(token)
        self._channel = grpc.secure_channel(address, tls.credentials(), options) if tls else \
            grpc.insecure_channel(address, options)
        self._stub = pb_grpc.StyleTransferStub(self._channel)
        self._health = self._channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            # HealthCheckRequest{string service = 1} and HealthCheckResponse{enum status = 1} have the wire
            # format of these wrappers, so the SDK needs no grpcio-health-checking.
            request_serializer=wrappers_pb2.StringValue.SerializeToString,
            response_deserializer=wrappers_pb2.Int32Value.FromString)
        self.target = address
        self.timeout = timeout

    def stream_request(self, request: pb.StylizeRequest, *, timeout: float | None = None) -> EventStream:
        """Send a prepared request (see :func:`build_request`).

        The request gets a ``request_id`` (a random UUID) unless it has one: a connection that breaks
        mid-stream is re-opened with the same key, the server attaches it to the same job, and the stream
        goes on — the job runs once, its result arrives once.
        """
        request = keyed(request)
        deadline = time.monotonic() + (timeout or self.timeout)

        def call() -> Any:
            return self._stub.Stylize(request, timeout=max(0.001, deadline - time.monotonic()),
                                      metadata=self._metadata)

        def cancel_job() -> None:
            metadata = (*(self._metadata or ()), (CANCEL_METADATA, "1"))
            with contextlib.suppress(grpc.RpcError):  # best effort: the job also ends when its grace runs out
                for _ in self._stub.Stylize(pb.StylizeRequest(request_id=request.request_id), timeout=5,
                                            metadata=metadata):
                    pass

        return EventStream(call(), Resumption(call, deadline, cancel_job=cancel_job), self.target)

    def server_info(self, *, timeout: float | None = 30.0) -> pb.GetServerInfoResponse:
        """Version, models, devices, limits and default parameters of the server."""
        try:
            response: pb.GetServerInfoResponse = self._stub.GetServerInfo(
                pb.GetServerInfoRequest(), metadata=self._metadata, timeout=timeout)
        except grpc.RpcError as error:
            raise from_rpc_error(error, self.target) from None
        return response

    def health(self, service: str = "", *, timeout: float | None = 10.0) -> str:
        """``SERVING``, ``NOT_SERVING`` … of ``service`` ("" = the whole server), by grpc.health.v1."""
        try:
            reply = self._health(wrappers_pb2.StringValue(value=service), timeout=timeout)
        except grpc.RpcError as error:
            raise from_rpc_error(error, self.target) from None
        return _HEALTH[reply.value] if 0 <= reply.value < len(_HEALTH) else str(reply.value)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalClient(_Stylizer):
    """Runs jobs in this process through the ``styletx.backends`` entry point ``local`` (``styletx_server.local``).

    The SDK never imports the engine itself; without the server extra installed this raises a clear error.
    """

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, backend: Any = None) -> None:
        self._backend = backend if backend is not None else load_backend("local")
        self.target = "local"
        self.timeout = timeout

    def stream_request(self, request: pb.StylizeRequest, *, timeout: float | None = None) -> EventStream:
        return EventStream(self._backend.stylize(request, timeout=timeout or self.timeout))

    def server_info(self, *, timeout: float | None = None) -> pb.GetServerInfoResponse:
        info: pb.GetServerInfoResponse = self._backend.server_info()
        return info

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        return "SERVING"

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def keyed(request: pb.StylizeRequest) -> pb.StylizeRequest:
    """``request`` with a ``request_id`` (a random UUID unless it has one; the caller's copy is not changed)."""
    if request.request_id:
        return request
    copy = pb.StylizeRequest()
    copy.CopyFrom(request)
    copy.request_id = uuid.uuid4().hex
    return copy


def load_backend(name: str) -> Any:
    """Instantiate the backend registered under ``name`` in the ``styletx.backends`` entry-point group."""
    hint = ("install the server + engine distribution (pip install . in the styletx repository) to run jobs in "
            "this process, or pass --server HOST:PORT to use a server")
    for entry in importlib.metadata.entry_points(group="styletx.backends"):
        if entry.name == name:
            try:
                backend_class = entry.load()
            except ImportError as error:  # registered, but the engine's dependencies (torch) are missing
                raise StyletxError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"the local engine cannot load ({error}): {hint}") from None
            return backend_class()
    raise StyletxError(grpc.StatusCode.FAILED_PRECONDITION, f"no local engine installed: {hint}")


def stylize(content: ImageInput, styles: Styles, *, server: str | None = None, token: str | None = None,
            timeout: float | None = None, **options: Unpack[JobOptions]) -> StylizeOutput:
    """One call: stylise ``content`` with ``styles`` on ``server`` (see :class:`Client`); returns the result.

    >>> out = stylize("photo.jpg", "starry.jpg", size=512, seed=1)     # doctest: +SKIP
    >>> out.save("out.jpg"); out.metrics["loss_style"]                  # doctest: +SKIP
    """
    with Client(server, token=token) as client:
        return client.stylize(content, styles, timeout=timeout, **options)
