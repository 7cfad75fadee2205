"""Issue 19's red-team findings, each against a real server on an ephemeral loopback port: unparsable requests,
cheap calls under concurrency, video frame limits, video fairness, admission budgets, idempotent retries."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from styletx_proto.v1 import styletx_pb2 as pb
from styletx_proto.v1 import styletx_pb2_grpc as pb_grpc
from support.fake import FakeEngine, ServerThread
from support.requests import request

_STYLIZE = "/styletx.v1.StyleTransfer/Stylize"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    thread = ServerThread(lambda d: FakeEngine(step_seconds=0.01), workers=1, queue_size=4, parity_gate="off")
    yield thread
    thread.stop()


# ------------------------------------------------------------------------------------ 4. invalid UTF-8


def _with_bad_string(message: Any, field: str) -> bytes:
    """``message`` serialised with ``field`` (a string set to "\\x01MARK") holding invalid UTF-8 instead."""
    data = message.SerializeToString()
    assert data.count(b"\x01MARK") == 1, field
    return data.replace(b"\x01MARK", b"\xff\xfeRK")


@pytest.mark.parametrize(("build", "field"), [
    (lambda: pb.StylizeRequest(model_name="\x01MARK", content=b"x"), "model_name"),
    (lambda: pb.StylizeRequest(params=pb.StylizeParams(content_layers=["relu4_2", "\x01MARK"])),
     "params.content_layers[1]"),
])
def test_invalid_utf8_is_internal_naming_the_field_with_one_log_line(
    server: ServerThread, caplog: pytest.LogCaptureFixture, build: Any, field: str
) -> None:
    data = _with_bad_string(build(), field)
    with grpc.insecure_channel(server.target) as channel:
        call = channel.unary_stream(_STYLIZE, request_serializer=None, response_deserializer=None)
        with caplog.at_level(logging.INFO), pytest.raises(grpc.RpcError) as raised:
            list(call(data, timeout=10))
        assert raised.value.code() == grpc.StatusCode.INTERNAL
        assert field in (raised.value.details() or "") and "UTF-8" in (raised.value.details() or "")
        lines = [r for r in caplog.records if r.name.startswith("styletx_server") or r.name.startswith("grpc")]
        assert len(lines) == 1 and lines[0].exc_info is None, [r.getMessage() for r in lines]
        # the server still works
        assert [e.WhichOneof("event") for e in pb_grpc.StyleTransferStub(channel).Stylize(
            request(), timeout=30)][-1] == "completed"


def test_repeated_request_errors_are_rate_limited(server: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    data = _with_bad_string(pb.StylizeRequest(model_name="\x01MARK"), "model_name")
    with grpc.insecure_channel(server.target) as channel:
        call = channel.unary_stream(_STYLIZE, request_serializer=None, response_deserializer=None)
        with caplog.at_level(logging.INFO):
            codes = []
            for _ in range(40):
                try:
                    list(call(data, timeout=10))
                except grpc.RpcError as error:
                    codes.append(error.code())
    assert codes == [grpc.StatusCode.INTERNAL] * 40
    lines = [r for r in caplog.records if r.name.startswith("styletx_server")]
    assert 1 <= len(lines) <= 10, len(lines)


def test_unparsable_video_message_names_it(server: ServerThread) -> None:
    data = _with_bad_string(pb.StylizeVideoRequest(config=pb.VideoConfig(model_name="\x01MARK")), "m")
    with grpc.insecure_channel(server.target) as channel:
        call = channel.stream_stream("/styletx.v1.StyleTransfer/StylizeVideo", request_serializer=None,
                                     response_deserializer=None)
        with pytest.raises(grpc.RpcError) as raised:
            list(call(iter([data]), timeout=10))
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert "messages[0].config.model_name" in (raised.value.details() or "")


# ----------------------------------------------------------------------- 5. cheap calls under concurrency


def _cheap_calls(channel: grpc.Channel, rounds: int, failures: list[str]) -> None:
    stub = pb_grpc.StyleTransferStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    for _ in range(rounds):
        try:
            stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30)
            health.Check(health_pb2.HealthCheckRequest(), timeout=30)
        except grpc.RpcError as error:
            failures.append(f"{error.code()}: {error.details()}")


@pytest.mark.parametrize("run", range(3))
def test_thirty_cheap_callers_on_three_connections_never_fail_while_a_job_runs(server: ServerThread,
                                                                              run: int) -> None:
    own = [("grpc.use_local_subchannel_pool", 1)]  # three real connections, not one shared by target
    channels = [grpc.insecure_channel(server.target, own) for _ in range(3)]
    failures: list[str] = []
    try:
        job = pb_grpc.StyleTransferStub(channels[0]).Stylize(request(iterations=300), timeout=60)
        assert next(job).WhichOneof("event") == "accepted"
        threads = [threading.Thread(target=_cheap_calls, args=(channels[i % 3], 25, failures))
                   for i in range(30)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert server.server.service.queue.running == 1  # type: ignore[union-attr]  # a job ran throughout
        job.cancel()
    finally:
        for channel in channels:
            channel.close()
    assert failures == []
