"""OpenTelemetry spans: one per RPC continuing the caller's trace (``traceparent`` metadata), and under it one per
job with its phases (queue, decode, each scale, encode, score); off unless the ``OTEL_*`` variables ask."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from styletx_proto.v1 import styletx_pb2_grpc as pb_grpc
from styletx_server import tracing
from support.fake import FakeEngine, ServerThread
from support.requests import kind, request

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT_ID = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    tracing.use_provider(None)


def children(all_spans: tuple[ReadableSpan, ...], parent: ReadableSpan) -> list[str]:
    assert parent.context is not None
    return [s.name for s in sorted(all_spans, key=lambda s: s.start_time or 0)
            if s.parent is not None and s.parent.span_id == parent.context.span_id]


def test_rpc_and_job_phases_continue_the_callers_trace(spans: InMemorySpanExporter) -> None:
    server = ServerThread(lambda device: FakeEngine(device))
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.StyleTransferStub(channel)
            events = list(stub.Stylize(request(iterations=3), metadata=[("traceparent", TRACEPARENT)]))
            assert kind(events[-1]) == "completed"
    finally:
        server.stop()
    finished = spans.get_finished_spans()
    rpc = next(s for s in finished if s.name == "/styletx.v1.StyleTransfer/Stylize")
    assert rpc.context is not None and rpc.context.trace_id == TRACE_ID
    assert rpc.parent is not None and rpc.parent.span_id == PARENT_ID  # the caller's span
    job = next(s for s in finished if s.name == "styletx.job")
    assert job.parent is not None and job.parent.span_id == rpc.context.span_id
    phases = children(finished, job)
    assert phases[:2] == ["queue", "decode"] and phases[-2:] == ["encode", "score"]
    scales = len(next(e for e in events if kind(e) == "started").started.scales)
    assert scales > 1 and phases[2:-2] == [f"scale {i}/{scales}" for i in range(1, scales + 1)]
    assert all(s.context is not None and s.context.trace_id == TRACE_ID for s in finished)


def test_off_by_default() -> None:
    assert tracing.configure_from_env({}) == "" and not tracing.enabled()
    assert tracing.configure_from_env({"OTEL_TRACES_EXPORTER": "none"}) == ""
    assert tracing.configure_from_env({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}) == ""
    assert tracing.server_interceptors() == [] and not tracing.tracer().start_span("x").is_recording()


def test_standard_variables_turn_it_on() -> None:
    try:
        assert tracing.configure_from_env({"OTEL_TRACES_EXPORTER": "console"}) == "console"
        assert tracing.enabled() and len(tracing.server_interceptors()) == 1
        assert tracing.configure_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}) == "otlp"
        with pytest.raises(ValueError, match="'zipkin' is not an installed exporter"):
            tracing.configure_from_env({"OTEL_TRACES_EXPORTER": "zipkin"})
    finally:
        tracing.use_provider(None)
