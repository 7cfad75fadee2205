"""Assemble and run the server: engines per device, servicer, health, reflection, metrics, graceful stop.

Shutdown follows grpc's ``async_greeter_server_with_graceful_shutdown``: on SIGTERM health turns NOT_SERVING
at once (load balancers stop sending work), waiting jobs get UNAVAILABLE (their clients retry elsewhere),
running jobs get ``grace`` seconds to finish, new calls are refused, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import Descriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import SERVICE_NAME as HEALTH_SERVICE
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from styletx_proto.v1 import styletx_pb2 as pb
from styletx_proto.v1 import styletx_pb2_grpc as pb_grpc

from . import tracing
from .auth import BearerTokenInterceptor, TokenStore, parse_tokens
from .config import ConfigError, ServerConfig, setting_name
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
T = TypeVar("T")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["StyleTransfer"].full_name


class StyletxServer:
    """A running server; ``port`` is the bound gRPC port (useful with port 0)."""

    def __init__(self, config: ServerConfig, engine_factory: EngineFactory | None = None) -> None:
        self.config = config
        self._factory = engine_factory
        self.port = 0
        self.metrics_port = 0
        self._metrics_http: Any = None
        self.tracing = "off"
        self.health = health_aio.HealthServicer()
        self.service: StyleTransferService | None = None
        self._server: grpc.aio.Server | None = None
        self._stopping: asyncio.Task[None] | None = None
        self.in_flight = InFlightCalls((f"/{SERVICE_NAME}/",))

    async def start(self) -> int:
        """Check and bind everything that can fail fast, then build one engine per worker (in threads: loading
        weights blocks), run the parity gate and report SERVING.

        Raises:
            ConfigError: every problem found before the slow work (ports, devices, TLS, tokens, the engine
                factory), one line each.
        """
        metrics = Metrics()
        devices, factory = self._bind(metrics)
        try:
            serving, limits = await self._build(devices, factory, metrics)
        except BaseException:  # release the ports: nothing may be left for the closing loop to trip over
            self._close_metrics()
            assert self._server is not None
            await self._server.stop(None)
            raise
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set("", status)
        await self.health.set(SERVICE_NAME, status)
        summary = startup_summary(self, devices, limits, serving)
        _LOGGER.info("%s", summary.pop("message"), extra=summary)
        return self.port

    async def _build(self, devices: list[str], factory: EngineFactory, metrics: Metrics) -> tuple[bool, Limits]:
        """The slow part: one engine per worker (in threads: loading weights blocks), the servicer, the modes'
        settings and the ONNX parity gate; then the gRPC server starts. Returns whether it serves, and the limits."""
        config = self.config
        engines = await asyncio.gather(*(asyncio.to_thread(factory, d) for d in devices))
        limits = dataclasses.replace(config.limits, workers=len(devices))
        service = StyleTransferService(engines, devices, limits, pb.GetServerInfoResponse(), metrics)
        service._info = build_info(devices, limits, sorted(service.modes), config)
        self.service = service
        self._add_services(service)
        serving = await service.prepare(config)  # the modes' settings and the ONNX parity gate
        service.start()
        assert self._server is not None
        await self._server.start()
        return serving, limits

    def _bind(self, metrics: Metrics) -> tuple[list[str], EngineFactory]:
        """Every check that needs no engine, and every port bound, before the slow start-up work; all problems
        are reported together."""
        config, problems = self.config, []

        def attempt(setting: str, action: Callable[[], T]) -> T | None:
            try:
                return action()
            except (OSError, ValueError) as error:
                problems.append(f"{setting}: {error}")
                return None

        tls = config.tls_cert and config.tls_key
        credentials = attempt(f"{setting_name('tls_cert')}, {setting_name('tls_key')}", lambda: server_credentials(
            config.tls_cert, config.tls_key, config.tls_client_ca or None) if tls else None)
        interceptors = attempt(f"{setting_name('auth_token_file')}, {setting_name('auth_tokens')}",
                               lambda: _interceptors(config))
        exporter = attempt("OTEL_TRACES_EXPORTER", lambda: tracing.configure_from_env(os.environ))
        self.tracing = exporter or ("on" if tracing.enabled() else "off")
        self._server = self._grpc_server(config.limits, [*tracing.server_interceptors(), *(interceptors or [])])
        port = attempt(setting_name("port"), lambda: _listen(self._server, config.host, config.port, credentials))
        self.port = port or 0
        if config.metrics_port:
            http = attempt(setting_name("metrics_port"),
                           lambda: _listen_metrics(metrics, config.metrics_host, config.metrics_port))
            self._metrics_http = http
            self.metrics_port = http.server_port if http else 0
        devices = attempt(setting_name("devices"), lambda: resolve_devices(config.devices, config.workers))
        factory = self._factory or attempt(setting_name("engine_factory"), lambda: load_engine_factory(config))
        if problems or devices is None or factory is None:
            self._close_metrics()
            raise ConfigError(problems)
        return devices, factory

    def _close_metrics(self) -> None:
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
            self._metrics_http = None

    def _grpc_server(self, limits: Limits, interceptors: list[grpc.aio.ServerInterceptor]) -> grpc.aio.Server:
        # ParseGuard last: its deserializer is the one the outer interceptors' handlers pass on.
        return grpc.aio.server(interceptors=[*interceptors, self.in_flight, ParseGuard(_request_types())], options=[
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

    def _add_services(self, service: StyleTransferService) -> None:
        """The servicers go onto the server bound in :meth:`_bind` (gRPC accepts them until it starts)."""
        assert self._server is not None
        pb_grpc.add_StyleTransferServicer_to_server(service, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection((SERVICE_NAME, HEALTH_SERVICE, reflection.SERVICE_NAME), self._server)

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
        await asyncio.to_thread(tracing.flush)
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


def startup_summary(server: StyletxServer, devices: list[str], limits: Limits, serving: bool) -> dict[str, Any]:
    """The one start-up line (``message``) an operator reads first, and its parts as log fields."""
    config = server.config
    security = ("mutual TLS" if config.tls_client_ca else "TLS") if config.tls_cert else "plaintext"
    if config.auth_tokens or config.auth_token_file:
        security += " + bearer tokens"
    metrics = f"http://{config.metrics_host}:{server.metrics_port}/metrics" if server.metrics_port else "off"
    weights = config.vgg_weights + (f" {config.vgg_weights_path}" if config.vgg_weights == "file" else "")
    fields: dict[str, Any] = {
        "grpc": f"{config.host}:{server.port}", "port": server.port, "metrics": metrics,
        "metrics_port": server.metrics_port, "security": security, "devices": devices, "weights": weights,
        "cache": config.cache_dir or "default", "parity_gate": config.parity_gate,
        "health": "SERVING" if serving else "NOT_SERVING", "tracing": server.tracing,
        "limits": {"max_size": limits.max_size, "max_pixels": limits.max_pixels, "max_styles": limits.max_styles,
                   "queue": limits.queue_capacity, "workers": limits.workers,
                   "max_receive_mb": config.max_receive_mb, "admission_memory_mb": config.admission_memory_mb},
    }
    limit_text = ", ".join(f"{k} {v}" for k, v in fields["limits"].items())
    fields["message"] = (
        f"serving {SERVICE_NAME} on {fields['grpc']} ({security}), health {fields['health']}; metrics {metrics}; "
        f"devices {','.join(devices)}; VGG weights {weights} (cache {fields['cache']}, parity gate "
        f"{config.parity_gate}); tracing {server.tracing}; limits: {limit_text}")
    return fields


def _listen(server: grpc.aio.Server, host: str, port: int, credentials: grpc.ServerCredentials | None) -> int:
    address = f"{host}:{port}"
    _probe(host, port)  # gRPC would log its own multi-line error first and then give no reason
    try:
        return server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError:  # grpc reports a failed bind as RuntimeError, with no reason
        raise OSError(f"cannot listen on {address} (in use, or not an address of this host)") from None


def _probe(host: str, port: int) -> None:
    """Bind ``host:port`` the way gRPC will (SO_REUSEADDR, every address the host resolves to) and let go."""
    try:
        addresses = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    for family, kind, proto, _, sockaddr in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as error:
                raise OSError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


def _listen_metrics(metrics: Metrics, host: str, port: int) -> Any:
    try:
        return metrics.serve(port, host)[0]
    except OSError as error:
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


def _interceptors(config: ServerConfig) -> list[grpc.aio.ServerInterceptor]:
    """Bearer-token authentication when tokens are configured (a file and/or STYLETX_AUTH_TOKENS)."""
    if not (config.auth_token_file or config.auth_tokens):
        return []
    try:
        store = TokenStore(parse_tokens(config.auth_tokens), config.auth_token_file or None)
    except ValueError as error:
        raise OSError(str(error)) from None  # reported as one line, like a taken port
    return [BearerTokenInterceptor(store)]


async def serve(config: ServerConfig) -> None:
    """Run until SIGTERM/SIGINT, then stop gracefully."""
    server = StyletxServer(config)
    await server.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.stop)
    await server.wait()
