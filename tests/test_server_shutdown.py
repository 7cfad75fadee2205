"""``styletx-server`` as a subprocess drains on SIGTERM: NOT_SERVING at once, the running job finishes, the
queued job and new calls get UNAVAILABLE, and the process exits 0."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from styletx_proto.v1 import styletx_pb2_grpc as pb_grpc
from support.process import start_server
from support.requests import kind, request

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_sigterm_drains_running_jobs_and_refuses_the_rest() -> None:
    process, port, log = start_server("--workers", "1", "--grace", "20")
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.StyleTransferStub(channel)
        statuses: list[int] = []
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=30
        )
        threading.Thread(target=lambda: statuses.extend(r.status for r in _quiet(watch)), daemon=True).start()

        running = stub.Stylize(request(iterations=30, coarse_iterations=0, min_size=64), timeout=30)
        while kind(next(running)) != "progress":
            pass
        queued = stub.Stylize(request(iterations=1), timeout=30)
        assert kind(next(queued)) == "accepted"

        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 2
        while health_pb2.HealthCheckResponse.NOT_SERVING not in statuses and time.monotonic() < deadline:
            time.sleep(0.01)
        assert statuses[-1] == health_pb2.HealthCheckResponse.NOT_SERVING, statuses

        assert _code(queued) == grpc.StatusCode.UNAVAILABLE
        assert _code(stub.Stylize(request(iterations=1), timeout=10)) == grpc.StatusCode.UNAVAILABLE
        kinds = [kind(e) for e in running]  # the running job finishes within the grace period
        assert kinds[-1] == "completed"
        assert process.wait(30) == 0
        assert any(e.get("message") == "stopped" for e in log), log
        assert all(e.get("level") and e.get("ts") for e in log)  # structured (JSON) log lines only
        channel.close()
    finally:
        if process.poll() is None:
            process.kill()


def _code(call: Any) -> grpc.StatusCode | None:
    try:
        for _ in call:
            pass
    except grpc.RpcError as error:
        return error.code()
    return None


def _quiet(stream: Any) -> Any:
    try:
        yield from stream
    except grpc.RpcError:
        return
