"""Assemble and run the server: engines per device, servicer, health, reflection, metrics, graceful stop.

Shutdown follows grpc's ``async_greeter_server_with_graceful_shutdown``: on SIGTERM health turns NOT_SERVING
at once (load balancers stop sending work), waiting jobs get UNAVAILABLE (their clients retry elsewhere),
running jobs get ``grace`` seconds to finish, new calls are refused, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from google.protobuf.descriptor import Descriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import SERVICE_NAME as HEALTH_SERVICE
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from styletx_proto.v1 import styletx_pb2 as pb
from styletx_proto.v1 import styletx_pb2_grpc as pb_grpc

from .auth import BearerTokenInterceptor, TokenStore, parse_tokens
from .config import ServerConfig
from .drain import InFlightCalls
from .engines import EngineFactory, load_engine_factory, resolve_devices
from .info import build_info
from .limits import Limits
from .metrics import Metrics
from .parsing import ParseGuard
from .peers import transport_streams
from .service import StyleTransferService
from .tls import server_credentials

__all__ = ["SERVICE_NAME", "StyletxServer", "serve"]

_LOGGER = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["StyleTransfer"].full_name


class StyletxServer:
    """A running server; ``port`` is the bound gRPC port (useful with port 0)."""

    def __init__(self, config: ServerConfig, engine_factory: EngineFactory | None = None) -> None:
        self.config = config
        self._factory = engine_factory
        self.port = 0
        self.metrics_port = 0
        self.health = health_aio.HealthServicer()
        self.service: StyleTransferService | None = None
        self._server: grpc.aio.Server | None = None
        self._stopping: asyncio.Task[None] | None = None
        self.in_flight = InFlightCalls((f"/{SERVICE_NAME}/",))

    async def start(self) -> int:
        """Build one engine per worker (in threads: loading weights blocks), bind, and report SERVING."""
        config = self.config
        devices = await asyncio.to_thread(resolve_devices, config.devices, config.workers)
        factory = self._factory or load_engine_factory(config)
        engines = await asyncio.gather(*(asyncio.to_thread(factory, d) for d in devices))
        limits = config.limits.__class__(**{**config.limits.__dict__, "workers": len(devices)})
        metrics = Metrics()
        service = StyleTransferService(engines, devices, limits, pb.GetServerInfoResponse(), metrics)
        service._info = build_info(devices, limits, sorted(service.modes), config)
        self.service = service
        serving = await service.prepare(config)  # the modes' settings and the ONNX parity gate
        self._server = self._grpc_server(limits)
        service.start()
        await self._server.start()
        if config.metrics_port:
            http_server, _ = metrics.serve(config.metrics_port, config.metrics_host)
            self.metrics_port = http_server.server_port
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set("", status)
        await self.health.set(SERVICE_NAME, status)
        _LOGGER.info("serving %s on port %d (devices %s)", SERVICE_NAME, self.port, ",".join(devices),
                     extra={"port": self.port, "metrics_port": self.metrics_port})
        return self.port

    def _grpc_server(self, limits: Limits) -> grpc.aio.Server:
        assert self.service is not None
        # ParseGuard last: its deserializer is the one the outer interceptors' handlers pass on.
        interceptors = [*_interceptors(self.config), self.in_flight, ParseGuard(_request_types())]
        server = grpc.aio.server(interceptors=interceptors, options=[
            ("grpc.max_receive_message_length", limits.max_receive_message_bytes),
            # A backstop far above the job-call limit, which the servicer enforces (see peers.py: HTTP/2's limit
            # counted cheap calls too and refused some of them under load).
            ("grpc.max_concurrent_streams", transport_streams(limits.calls_per_connection)),
            ("grpc.max_send_message_length", limits.max_send_message_bytes),
            # Accept the SDK's keepalive pings (every 30 s, also between calls) instead of answering GOAWAY.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            # Ping clients too, and keep pinging while no data flows (an idle video stream, a queued job): a
            # peer that vanished without closing its connection is dropped within time + timeout, and its
            # calls are cancelled, instead of holding their place for hours.
            ("grpc.keepalive_time_ms", round(self.config.keepalive_seconds * 1000)),
            ("grpc.keepalive_timeout_ms", round(self.config.keepalive_timeout_seconds * 1000)),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.min_time_between_pings_ms", round(self.config.keepalive_seconds * 1000)),
            ("grpc.http2.ping_timeout_ms", round(self.config.keepalive_timeout_seconds * 1000)),
            # Two servers on one port would split the traffic silently; fail the second one instead.
            ("grpc.so_reuseport", 0),
        ])
        pb_grpc.add_StyleTransferServicer_to_server(self.service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection((SERVICE_NAME, HEALTH_SERVICE, reflection.SERVICE_NAME), server)
        address = f"{self.config.host}:{self.config.port}"
        try:
            if self.config.tls_cert and self.config.tls_key:
                credentials = server_credentials(self.config.tls_cert, self.config.tls_key,
                                                 self.config.tls_client_ca or None)
                self.port = server.add_secure_port(address, credentials)
            else:
                self.port = server.add_insecure_port(address)
        except RuntimeError as error:  # grpc reports a failed bind as RuntimeError
            raise OSError(f"cannot listen on {address}: {error}") from None
        return server

    def stop(self, grace: float | None = None) -> asyncio.Task[None]:
        """Begin a graceful stop (idempotent); await the returned task for its end."""
        if self._stopping is None:
            self._stopping = asyncio.create_task(self._stop(self.config.grace if grace is None else grace))
        return self._stopping

    async def _stop(self, grace: float) -> None:
        assert self._server is not None and self.service is not None
        await self.health.enter_graceful_shutdown()
        self.service.queue.close()
        _LOGGER.info("shutting down: %d running job(s) get %.0fs", self.service.queue.running, grace)
        # Wait for the job streams alone: health Watch streams never end by themselves and would hold every
        # drain for the whole grace period. What is still open after that is cancelled.
        if not await self.in_flight.wait_idle(grace):
            _LOGGER.warning("grace period over: cancelling %d call(s)", self.in_flight.count)
        await self._server.stop(0)
        self.service.queue.cancel_running()
        await self.service.queue.join()
        _LOGGER.info("stopped")

    async def wait(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()
        if self._stopping is not None:
            await self._stopping


def _request_types() -> dict[str, Descriptor]:
    """``/styletx.v1.StyleTransfer/Stylize`` → StylizeRequest's descriptor, for every method."""
    service = pb.DESCRIPTOR.services_by_name["StyleTransfer"]
    return {f"/{service.full_name}/{method.name}": method.input_type for method in service.methods}


def _interceptors(config: ServerConfig) -> list[grpc.aio.ServerInterceptor]:
    """Bearer-token authentication when tokens are configured (a file and/or STYLETX_AUTH_TOKENS)."""
    if not (config.auth_token_file or config.auth_tokens):
        return []
    try:
        store = TokenStore(parse_tokens(config.auth_tokens), config.auth_token_file or None)
    except ValueError as error:
        raise OSError(str(error)) from None  # reported by __main__ as one line, like a taken port
    return [BearerTokenInterceptor(store)]


async def serve(config: ServerConfig) -> None:
    """Run until SIGTERM/SIGINT, then stop gracefully."""
    server = StyletxServer(config)
    await server.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.stop)
    await server.wait()
