"""The server's request path without gRPC: proto request → validation → engine → proto events, in-process.

``styletx stylize`` without ``--server`` uses this through the ``styletx.backends`` entry point (name
``local``), so the client package never imports the engine, yet local and remote runs share one code path
and report the same events and errors (:class:`~server.errors.ServiceError` has ``.code`` like a gRPC error).
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
import weakref
from collections.abc import Iterator

import grpc
from styletx_proto.v1 import styletx_pb2 as pb

from .config import ServerConfig, parse_config
from .engines import EngineFactory, load_engine_factory, resolve_devices
from .errors import ServiceError, from_engine_error
from .image_job import ImageJob
from .info import build_info
from .job import Job
from .modes import ModeModels, ModeSettings
from .modes.models import describe
from .modes.runners import MODE_RUNNERS
from .validation import validate_request
from .worker import Engine, Worker

__all__ = ["LocalBackend", "LocalStream"]

_END = object()
#: Streams whose job may still run; stopped at interpreter exit (a caller that never iterated, or exited).
_LIVE: weakref.WeakSet[LocalStream] = weakref.WeakSet()


@atexit.register
def _stop_live_jobs() -> None:
    for stream in list(_LIVE):
        stream.stop()
#: How long the end of a stream waits for its job's thread to finish (it has sent its last event already).
JOIN_SECONDS = 30.0


class LocalStream:
    """Iterator of proto events of one in-process job; :meth:`cancel` stops it within one iteration."""

    def __init__(self, job_events: queue.Queue[object], deadline: float | None) -> None:
        self._events = job_events
        self._deadline = deadline
        self.job: Job | None = None
        self.thread: threading.Thread | None = None
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()
        if self.job is not None:
            self.job.cancel.set()

    def __iter__(self) -> Iterator[pb.StylizeEvent]:
        ended = False
        try:
            while True:
                item = self._get()
                if item is _END or isinstance(item, BaseException):
                    ended = True
                    self._join()
                    if isinstance(item, BaseException):
                        raise item
                    return
                assert isinstance(item, pb.StylizeEvent)
                yield item
        finally:
            if not ended:  # Ctrl-C (KeyboardInterrupt), a deadline, or a caller that stopped reading
                self.stop()

    def stop(self) -> None:
        """Cancel the job and wait for its thread (it stops within one iteration): the engine must never be
        left running in a thread while the interpreter shuts down, where torch aborts the process (rc 134)."""
        self.cancel()
        self._join()

    def _join(self) -> None:
        """Wait for the job's thread, which ends right after its last event: a caller that exits at once
        (the CLI after an error) would otherwise tear down torch under a thread still unwinding in it, and the
        process could abort ("terminate called without an active exception")."""
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=JOIN_SECONDS)

    def _get(self) -> object:
        while True:
            wait = None if self._deadline is None else self._deadline - time.monotonic()
            if wait is not None and wait <= 0:
                self.cancel()
                raise ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
            try:
                return self._events.get(timeout=None if wait is None else min(wait, 0.5))
            except queue.Empty:
                continue


class LocalBackend:
    """One engine on one device, built on first use; configured by the same ``STYLETX_*`` variables."""

    def __init__(self, config: ServerConfig | None = None,
                 engine_factory: EngineFactory | None = None) -> None:
        self.config = config or parse_config([])
        self._factory = engine_factory
        self.models = ModeModels(ModeSettings.from_config(self.config))
        self._worker: Worker | None = None
        self._lock = threading.Lock()

    def _worker_for_job(self) -> Worker:
        with self._lock:
            if self._worker is None:
                device = resolve_devices(self.config.devices, 1)[0]
                engine: Engine = (self._factory or load_engine_factory(self.config))(device)
                self._worker = Worker(engine, device, self.models)
            return self._worker

    def stylize(self, request: pb.StylizeRequest, timeout: float | None = None) -> LocalStream:
        """Start the job in a thread; iterate the result for its events (errors raise ServiceError)."""
        events: queue.Queue[object] = queue.Queue()
        stream = LocalStream(events, None if timeout is None else time.monotonic() + timeout)
        stream.thread = threading.Thread(target=self._run, args=(request, stream, events), daemon=True,
                                         name="styletx-local")
        _LIVE.add(stream)
        stream.thread.start()
        return stream

    def _run(self, request: pb.StylizeRequest, stream: LocalStream, events: queue.Queue[object]) -> None:
        received = time.monotonic()
        job: Job | None = None
        try:
            validated = validate_request(request, self.config.limits, frozenset(MODE_RUNNERS),
                                         self.models.cyclegan_names)
            job = Job(ImageJob(validated, self.config.limits.max_chunk_bytes), events.put,
                      decode_seconds=time.monotonic() - received, received=received)
            stream.job = job
            if stream._cancel.is_set():
                job.cancel.set()
            events.put(pb.StylizeEvent(job_id=job.id, accepted=pb.Accepted(job_id=job.id)))
            job.work.run(job, self._worker_for_job())
            events.put(_END)
        except BaseException as error:  # handed to the iterating thread, never lost
            events.put(from_engine_error(error, job.id if job else "-"))

    def server_info(self) -> pb.GetServerInfoResponse:
        devices = resolve_devices(self.config.devices, 1)
        limits = self.config.limits
        info = build_info(devices, limits, MODE_RUNNERS, self.config)
        gate = pb.ParityGate(checked=False, ok=True, message="not run in-process (the server runs it)")
        describe(info, self.models, limits, gate)
        return info
