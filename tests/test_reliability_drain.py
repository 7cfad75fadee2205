"""Drain with two replicas: SIGTERM to A while it runs one job and queues another.

A turns NOT_SERVING at once, its running job completes within the grace period, its queued job gets
UNAVAILABLE with a retry hint, and it exits 0. Meanwhile an SDK client with both replicas as one target
(``ipv4:`` list, ``round_robin``) and its retry policy keeps working: every job lands on B.
"""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from styletx_client import Client, RetryPolicy
from styletx_proto.v1 import styletx_pb2_grpc as pb_grpc
from support.process import start_server
from support.requests import png, request

JOB: dict[str, Any] = {"size": 64, "min_size": 32, "iterations": 2, "coarse_iterations": 0}


def _accepted_ids(log: list[Any]) -> set[str]:
    return {e["job_id"] for e in log if "job_id" in e and "accepted" in str(e.get("message", ""))}


def _watch(channel: grpc.Channel, statuses: list[int]) -> None:
    stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
    try:
        statuses.extend(reply.status for reply in stream)
    except grpc.RpcError:
        return


@pytest.mark.slow
def test_sigterm_drains_and_the_sdk_retries_land_on_the_other_replica() -> None:
    with ThreadPoolExecutor(2) as pool:
        (a, port_a, log_a), (b, port_b, log_b) = pool.map(
            lambda _: start_server("--workers", "1", "--grace", "20"), range(2))
    retry = RetryPolicy(max_attempts=5, initial_backoff=0.05, max_backoff=0.5)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port_a}")
        stub = pb_grpc.StyleTransferStub(channel)
        statuses: list[int] = []
        threading.Thread(target=_watch, args=(channel, statuses), daemon=True).start()
        running = stub.Stylize(request(iterations=40, coarse_iterations=0, min_size=64), timeout=60)  # 2 s
        while next(running).WhichOneof("event") != "progress":
            pass
        queued = stub.Stylize(request(iterations=1), timeout=60)
        assert next(queued).WhichOneof("event") == "accepted"
        with Client(f"ipv4:127.0.0.1:{port_a},127.0.0.1:{port_b}", load_balancing="round_robin",
                    retry=retry, timeout=60) as client:
            assert client.health() == "SERVING"
            a.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            while health_pb2.HealthCheckResponse.NOT_SERVING not in statuses and time.monotonic() < signalled + 2:
                time.sleep(0.01)
            assert statuses[-1] == health_pb2.HealthCheckResponse.NOT_SERVING, statuses

            try:
                list(queued)
                raise AssertionError("the queued job was not refused")
            except grpc.RpcError as error:
                hints = dict(error.trailing_metadata() or ())
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                assert "retry" in (error.details() or "") and "retry-after-ms" in hints

            # While A drains: new jobs (and the refused one, resubmitted) all complete, on B.
            outputs = [client.stylize(png(), [png((32, 32))], **JOB) for _ in range(6)]
            assert all(o.width == 64 for o in outputs)
            assert {o.job_id for o in outputs} <= _accepted_ids(log_b)
            assert not {o.job_id for o in outputs} & _accepted_ids(log_a)

        kinds = [event.WhichOneof("event") for event in running]  # finished within the grace period
        assert kinds[-1] == "completed"
        # Exit 0 once the job streams are done: well inside the 20 s grace even though a health Watch stream
        # (the test's own) is still open, which a plain server.stop(grace) would wait for to the end.
        assert a.wait(30) == 0 and time.monotonic() - signalled < 10
        channel.close()
        with Client(f"127.0.0.1:{port_b}", retry=None) as survivor:
            assert survivor.health() == "SERVING"
    finally:
        for process in (a, b):
            if process.poll() is None:
                process.kill()
