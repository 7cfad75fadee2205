"""OpenTelemetry traces: a server span per RPC (opentelemetry-instrumentation-grpc, whose interceptor continues the
caller's trace from the ``traceparent`` metadata) and, under it, a span per image job with its phases — queue
wait, decode, each scale of the optimisation, encode, scoring.

Off by default, and then free: :func:`tracer` hands out OpenTelemetry's no-op tracer and no interceptor is
installed. :func:`configure_from_env` turns it on from the standard variables only: ``OTEL_TRACES_EXPORTER``
(``otlp``, ``console``, or any installed exporter; ``none``: off) or an OTLP endpoint
(``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, which imply ``otlp``), and
``OTEL_SDK_DISABLED=true`` keeps it off. Everything else (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER``, ``OTEL_PROPAGATORS``, the exporter's endpoint, headers and TLS) is read by the SDK itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import entry_points
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.context import Context

__all__ = ["ScaleSpans", "configure_from_env", "enabled", "flush", "job_span", "phase", "server_interceptors",
           "tracer", "use_provider"]

_provider: trace.TracerProvider | None = None
_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
#: The SDK's own spelling: "otlp" is the gRPC exporter (the only OTLP protocol installed).
_ALIASES = {"otlp": "otlp_proto_grpc"}


def use_provider(provider: trace.TracerProvider | None) -> None:
    """Trace through ``provider`` (None: off; the previous one is shut down). Tests pass one with an in-memory
    exporter."""
    global _provider
    previous, _provider = _provider, provider
    shutdown = getattr(previous, "shutdown", None)
    if shutdown is not None and previous is not provider:
        shutdown()


def configure_from_env(environ: Mapping[str, str]) -> str:
    """Turn tracing on when the ``OTEL_*`` variables ask for it; returns the exporter's name ("" when off).

    Raises:
        ValueError: ``OTEL_TRACES_EXPORTER`` names an exporter that is not installed.
    """
    name = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not name and any(environ.get(key) for key in _ENDPOINTS):
        name = "otlp"
    if not name or name == "none" or environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return ""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    found = entry_points(group="opentelemetry_traces_exporter", name=_ALIASES.get(name, name))
    if not found:
        installed = sorted({"otlp", *(e.name for e in entry_points(group="opentelemetry_traces_exporter"))})
        raise ValueError(f"{name!r} is not an installed exporter ({', '.join(installed)}, or none)")
    exporter = next(iter(found)).load()()
    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "styletx-server"}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    use_provider(provider)
    return name


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The RPC spans' interceptor when tracing is on (it must come first: its span encloses the others)."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(tracer_provider=_provider)]


def tracer() -> trace.Tracer:
    """The server's tracer; a no-op one while tracing is off."""
    return trace.get_tracer("styletx_server", tracer_provider=_provider or trace.NoOpTracerProvider())


def enabled() -> bool:
    return _provider is not None


def flush() -> None:
    """Export spans still buffered (on a graceful stop)."""
    flush_fn = getattr(_provider, "force_flush", None)
    if flush_fn is not None:
        flush_fn()


@contextmanager
def job_span(parent: Context | None, job_id: str, queued_at: float) -> Iterator[trace.Span]:
    """A job's span, a child of the RPC that submitted it (``parent``: the context captured then), with the
    time it waited in the queue as a ``queue`` span that ends now."""
    with tracer().start_as_current_span("styletx.job", context=parent, attributes={"styletx.job_id": job_id},
                                        start_time=_wall_ns(queued_at)) as span:
        tracer().start_span("queue", start_time=_wall_ns(queued_at)).end()
        yield span


@contextmanager
def phase(name: str, **attributes: Any) -> Iterator[trace.Span]:
    """A phase of the current job (decode, scale 2/5, encode, score)."""
    with tracer().start_as_current_span(name, attributes=attributes) as span:
        yield span


class ScaleSpans:
    """One span per scale of the optimisation, opened and closed from the engine's per-step callback."""

    def __init__(self) -> None:
        self._span: trace.Span | None = None
        self._index = -1

    def step(self, scale_index: int, scale_count: int, width: int, height: int) -> None:
        if scale_index != self._index:
            self.close()
            self._index = scale_index
            self._span = tracer().start_span(f"scale {scale_index + 1}/{scale_count}", attributes={
                "styletx.scale.width": width, "styletx.scale.height": height})

    def close(self) -> None:
        if self._span is not None:
            self._span.end()
            self._span = None


def _wall_ns(monotonic: float) -> int:
    """A ``time.monotonic()`` instant as the epoch nanoseconds spans are stamped with."""
    return time.time_ns() - int((time.monotonic() - monotonic) * 1e9)
