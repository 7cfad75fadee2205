"""Injected faults in the real engine: the failing job ends with a clear status, the server carries on.

Faults come in through the engine factory, never through a switch in production code: :class:`FaultyEngine`
wraps the real :class:`~styletx_core.engine.StyleTransfer` (random weights, 32 px, Adam) and hands one job at a
time a :class:`FaultLoss`, an extra loss term (the engine's ``extra_losses``) that fails at its n-th
evaluation: inside the optimiser's step, where a real out-of-memory or NaN would occur.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from styletx_proto.v1 import styletx_pb2 as pb
from styletx_proto.v1 import styletx_pb2_grpc as pb_grpc
from styletx_server.errors import MAX_MESSAGE_CHARS, ServiceError, from_engine_error
from support.fake import ServerThread
from support.faults import FaultyEngine
from support.requests import encode

from styletx_core.engine import NumericalError


def job(iterations: int = 3) -> pb.StylizeRequest:
    content = Image.new("RGB", (32, 24), (180, 90, 30))
    content.putpixel((3, 3), (0, 0, 0))
    return pb.StylizeRequest(
        content=encode(content, "PNG"), styles=[pb.Style(image=encode(Image.new("RGB", (16, 16), (20, 40, 200)),
                                                                      "PNG"))],
        params=pb.StylizeParams(size=32, min_size=32, iterations=iterations, coarse_iterations=0,
                                optimizer=pb.OPTIMIZER_ADAM, seed=1),
        skip_quality=True)  # the quality pass is not what is tested here


@pytest.fixture(scope="module")
def faulty(engine: Any) -> FaultyEngine:
    return FaultyEngine(engine)


@pytest.fixture(scope="module")
def server(faulty: FaultyEngine) -> Iterator[ServerThread]:
    thread = ServerThread(lambda device: faulty, workers=1, queue_size=4)
    yield thread
    thread.stop()


def _run(call: Any) -> tuple[list[str], grpc.StatusCode, str]:
    kinds: list[str] = []
    try:
        kinds.extend(str(event.WhichOneof("event")) for event in call)
    except grpc.RpcError as error:
        return kinds, error.code(), error.details() or ""
    return kinds, grpc.StatusCode.OK, ""


@pytest.mark.parametrize(("fault", "code", "words"), [
    ("oom", grpc.StatusCode.RESOURCE_EXHAUSTED, "ran out of memory"),
    ("nan", grpc.StatusCode.INTERNAL, "loss became nan at iteration 2"),
    ("other", grpc.StatusCode.INTERNAL, "injected fault"),
])
def test_a_fault_fails_only_its_job(server: ServerThread, faulty: FaultyEngine, fault: str,
                                    code: grpc.StatusCode, words: str) -> None:
    faulty.faults.append({"fault": fault, "fault_at": 2})
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.StyleTransferStub(channel)
        failing = stub.Stylize(job(), timeout=120)
        assert next(failing).WhichOneof("event") == "accepted"
        behind = stub.Stylize(job(), timeout=120)  # queued behind the failing job: must still run
        kinds, status, message = _run(failing)
        assert status == code and words in message, (status, message)
        assert "progress" in kinds and "completed" not in kinds  # iteration 1 was reported, then the fault
        kinds, status, message = _run(behind)
        assert status == grpc.StatusCode.OK and kinds[-1] == "completed", (status, message)
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_an_image_too_thin_for_the_network_is_refused_by_name(server: ServerThread) -> None:
    request = job()
    request.content = encode(Image.new("RGB", (1, 200)), "PNG")
    with grpc.insecure_channel(server.target) as channel:
        _, status, message = _run(pb_grpc.StyleTransferStub(channel).Stylize(request, timeout=60))
    assert status == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("content"), (status, message)


@pytest.mark.parametrize(("error", "code", "words"), [
    (MemoryError(), grpc.StatusCode.RESOURCE_EXHAUSTED, "out of memory"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), grpc.StatusCode.RESOURCE_EXHAUSTED,
     "smaller size"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "smaller size"),
    (NumericalError("the loss became inf at iteration 7; try lower weights"), grpc.StatusCode.INTERNAL,
     "job j failed: the loss became inf"),
    (ZeroDivisionError("division by zero"), grpc.StatusCode.INTERNAL, "ZeroDivisionError"),
])
def test_engine_errors_map_to_statuses(error: BaseException, code: grpc.StatusCode, words: str) -> None:
    failure = from_engine_error(error, "j")
    assert failure.code == code and words in failure.message, failure.message


def test_error_messages_are_bounded() -> None:
    """A message quoting a hostile request must not outgrow the client's 8 KiB trailer limit."""
    error = ServiceError.invalid("params.content_layers", "unknown layer(s) " + "x" * 100_000)
    assert len(error.message) <= MAX_MESSAGE_CHARS and error.message.startswith("params.content_layers: ")
