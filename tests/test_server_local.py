"""The in-process backend: the same validation, events and errors as the gRPC path, without gRPC."""

from __future__ import annotations

import contextlib
import time

import grpc
import pytest
from styletx_server.errors import ServiceError
from styletx_server.local import LocalBackend
from support.fake import FakeEngine
from support.requests import kind, request

from styletx_core.options import StylizeOptions


@pytest.fixture()
def backend() -> LocalBackend:
    return LocalBackend(engine_factory=lambda device: FakeEngine(device, step_seconds=0.01))


def test_local_job_streams_the_same_events(backend: LocalBackend) -> None:
    kinds = [kind(e) for e in backend.stylize(request(seed=2), timeout=30)]
    assert kinds[:2] == ["accepted", "started"] and kinds[-2:] == ["result_chunk", "completed"]
    scales = StylizeOptions(size=64, min_size=32).scales()
    assert kinds.count("progress") == 3 + 2 * (len(scales) - 1)


def test_local_errors_carry_the_grpc_code(backend: LocalBackend) -> None:
    with pytest.raises(ServiceError) as caught:
        list(backend.stylize(request(size=4)))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and caught.value.field == "params.size"


def test_local_deadline_and_cancel(backend: LocalBackend) -> None:
    with pytest.raises(ServiceError) as caught:
        list(backend.stylize(request(iterations=500), timeout=0.3))
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    stream = backend.stylize(request(iterations=500), timeout=30)
    with pytest.raises(ServiceError) as caught:  # the job thread ends the stream with CANCELLED
        for event in stream:
            if kind(event) == "progress":
                stream.cancel()
    assert caught.value.code == grpc.StatusCode.CANCELLED


def test_local_server_info(backend: LocalBackend) -> None:
    info = backend.server_info()
    assert info.limits.max_chunk_bytes == 1 << 20 and info.defaults.iterations > 0


class _SlowTeardown(LocalBackend):
    """A job thread that goes on for a moment after its last event, as a thread unwinding torch state does."""

    def _run(self, *args: object) -> None:
        super()._run(*args)  # type: ignore[arg-type]
        time.sleep(0.3)


@pytest.mark.parametrize("changes", [{"seed": 2}, {"size": 4}])
def test_stream_end_waits_for_the_job_thread(changes: dict[str, int]) -> None:
    # A caller that exits right after the last event (the CLI after an error) must not leave the job's thread
    # running: the process could abort in torch's teardown ("terminate called without an active exception").
    backend = _SlowTeardown(engine_factory=lambda device: FakeEngine(device, step_seconds=0.01))
    stream = backend.stylize(request(**changes), timeout=30)
    with contextlib.suppress(ServiceError):
        list(stream)
    assert stream.thread is not None and not stream.thread.is_alive()
