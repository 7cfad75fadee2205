"""The ``styletx.v1.StyleTransfer`` servicer: admit a job, stream its events, map failures to statuses.

The servicer only links things together (grpc ``examples/python/cancellation``): validation lives in
:mod:`.validation`, scheduling in :mod:`.queue`, the work in :mod:`.jobs`. A call that ends early (client
cancel, deadline, server stop) sets the job's cancel event and takes it out of the queue.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import AsyncIterator, Sequence

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from styletx.v1 import styletx_pb2 as pb
from styletx.v1 import styletx_pb2_grpc as pb_grpc

from .errors import ServiceError, from_engine_error
from .jobs import MODE_RUNNERS, Engine, Job, run_job
from .metrics import Metrics
from .queue import JobQueue
from .validation import Limits, validate_request

__all__ = ["EventChannel", "StyleTransferService"]

_LOGGER = logging.getLogger(__name__)


class EventChannel:
    """Events from a worker thread to the RPC coroutine, ended by :meth:`close` (with an error or without)."""

    _END = object()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._error: ServiceError | None = None

    def emit(self, event: pb.StylizeEvent) -> None:
        """Thread safe: called by the engine's callback in a worker thread."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    def close(self, error: ServiceError | None) -> None:
        """Loop thread only; queued after every event already emitted, so nothing is lost."""
        self._error = error
        self._loop.call_soon(self._queue.put_nowait, self._END)

    async def __aiter__(self) -> AsyncIterator[pb.StylizeEvent]:
        while (item := await self._queue.get()) is not self._END:
            assert isinstance(item, pb.StylizeEvent)
            yield item
        if self._error is not None:
            raise self._error


class StyleTransferService(pb_grpc.StyleTransferServicer):
    """One engine per device; ``info`` is the static part of ``GetServerInfoResponse``."""

    def __init__(self, engines: Sequence[Engine], devices: Sequence[str], limits: Limits,
                 info: pb.GetServerInfoResponse, metrics: Metrics | None = None) -> None:
        self._engines = list(engines)
        self._devices = list(devices)
        self.limits = limits
        self.metrics = metrics or Metrics()
        self._info = info
        self._channels: dict[str, EventChannel] = {}
        self.modes = frozenset(MODE_RUNNERS)
        self.queue = JobQueue(self._run, self._job_done, workers=len(self._engines),
                              capacity=limits.queue_capacity)
        self.metrics.queue_depth.set_function(lambda: self.queue.depth)
        self.metrics.jobs_running.set_function(lambda: self.queue.running)

    def start(self) -> None:
        self.queue.start()

    async def Stylize(  # noqa: N802 - gRPC method name
        self, request: pb.StylizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StylizeEvent]:
        job = await self._admit(request, context)
        finished = False
        try:
            async for event in self._channels[job.id]:
                yield event
            finished = True
        except ServiceError as error:
            finished = True
            await _abort(context, error)
        finally:
            self._channels.pop(job.id, None)
            if not finished:  # the client cancelled, the deadline passed, or the server is stopping
                job.cancel.set()
                if self.queue.withdraw(job):
                    self.metrics.jobs.labels(code="CANCELLED").inc()
                _LOGGER.info("job %s abandoned by its caller", job.id, extra={"job_id": job.id})

    async def GetServerInfo(  # noqa: N802 - gRPC method name
        self, request: pb.GetServerInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetServerInfoResponse:
        info = pb.GetServerInfoResponse()
        info.CopyFrom(self._info)
        info.queue_depth = self.queue.depth
        return info

    async def _admit(self, request: pb.StylizeRequest, context: grpc.aio.ServicerContext) -> Job:
        """Validate and enqueue, or abort the call. A full queue refuses before paying for decoding."""
        received = time.monotonic()
        try:
            self.queue.check_capacity()
            validated = await asyncio.to_thread(validate_request, request, self.limits, self.modes)
            channel = EventChannel(asyncio.get_running_loop())
            job = Job(validated, channel.emit, decode_seconds=time.monotonic() - received, received=received)
            position = self.queue.submit(job)
        except ServiceError as error:
            self.metrics.jobs.labels(code=error.code.name).inc()
            await _abort(context, error)
            raise  # unreachable: abort raises
        self._channels[job.id] = channel
        channel.emit(pb.StylizeEvent(job_id=job.id, accepted=pb.Accepted(
            job_id=job.id, queue_position=position, queue_capacity=self.queue.capacity)))
        _LOGGER.info("job %s accepted at position %d", job.id, position, extra={"job_id": job.id})
        return job

    def _run(self, job: Job, worker: int) -> None:
        """Worker thread: one job on this worker's engine."""
        engine = self._engines[worker]
        try:
            stats = run_job(job, engine, self._devices[worker], self.limits.max_chunk_bytes)
        finally:
            self.metrics.observe_cache(worker, engine)
        self.metrics.job_finished("OK", stats.iterations, stats.run_seconds, stats.total_seconds)

    def _job_done(self, job: Job, error: BaseException | None) -> None:
        """Loop thread: end the job's stream (the RPC may already be gone)."""
        failure = None if error is None else from_engine_error(error, job.id)
        if failure is not None:
            self.metrics.jobs.labels(code=failure.code.name).inc()
        channel = self._channels.get(job.id)
        if channel is not None:
            channel.close(failure)


async def _abort(context: grpc.aio.ServicerContext, error: ServiceError) -> None:
    """Abort with the code, the plain metadata hints and the same as google.rpc rich details."""
    metadata = [*error.details.items(), ("grpc-status-details-bin", _rich_status(error).SerializeToString())]
    await context.abort(error.code, error.message, trailing_metadata=tuple(metadata))


def _rich_status(error: ServiceError) -> status_pb2.Status:
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    detail = any_pb2.Any()
    if error.field:
        detail.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=error.field, description=error.message)]))
        status.details.append(detail)
    elif error.retry_after is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromTimedelta(datetime.timedelta(seconds=error.retry_after))
        detail.Pack(retry)
        status.details.append(detail)
    return status
