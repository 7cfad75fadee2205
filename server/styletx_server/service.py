"""The ``styletx.v1.StyleTransfer`` servicer: admit a job, stream its events, map failures to statuses.

The servicer only links things together (grpc ``examples/python/cancellation``): validation lives in
:mod:`.validation`, scheduling in :mod:`.queue`, the work in :mod:`.jobs` and :mod:`.modes`. A call that ends
early (client cancel, deadline, server stop) sets the job's cancel event and takes it out of the queue.

Before it serves, the service runs the ONNX parity gate (:meth:`StyleTransferService.prepare`); a server whose
gate failed refuses every job with UNAVAILABLE and reports the gate in GetServerInfo.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from styletx_proto.v1 import styletx_pb2 as pb
from styletx_proto.v1 import styletx_pb2_grpc as pb_grpc

from styletx_core.engine import StyleTransfer

from .admission import MemoryBudget, Reservation, footprint, header_pixels
from .errors import ServiceError, from_engine_error
from .idempotency import CANCEL_METADATA, JobLog, Record, Records, caller_of, check_key, fingerprint
from .image_job import ImageJob, batch_key_of, run_image_batch
from .job import Job
from .limits import Limits
from .metrics import Metrics
from .modes import ModeModels, ModeSettings
from .modes.models import describe
from .modes.runners import MODE_RUNNERS
from .modes.video import EOF, VideoSession, validate_video
from .peers import PeerGate
from .queue import YIELDED, JobQueue
from .validation import validate_request
from .worker import Engine, Worker

if TYPE_CHECKING:
    from .config import ServerConfig

__all__ = ["EventChannel", "StyleTransferService"]

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")
#: Failures a retry with the same request_id is answered with again (they would recur); other outcomes
#: (cancelled, shutting down, out of memory) let the retry run the job anew.
_TIMED_OUT = object()
#: Auto ``--max-batch`` on a GPU: the memory plan may allow fewer (:func:`styletx_core.batch.fitting_batch`).
AUTO_GPU_BATCH = 32
_KEPT_FAILURES = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                            grpc.StatusCode.INTERNAL})


class EventChannel:
    """Messages from a worker thread to the RPC coroutine, ended by :meth:`close` (with an error or without).

    The first close wins: a stream that failed on the loop side (a bad frame) keeps that error even when the
    worker then reports the cancellation it caused.
    """

    _END = object()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._error: ServiceError | None = None
        self._closed = False

    def emit(self, event: Any) -> None:
        """Thread safe: called by the engine's callback in a worker thread."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    def close(self, error: ServiceError | None) -> None:
        """Loop thread only; queued after every event already emitted, so nothing is lost."""
        if self._closed:
            return
        self._closed = True
        self._error = error
        self._loop.call_soon(self._queue.put_nowait, self._END)

    async def __aiter__(self) -> AsyncIterator[Any]:
        while (item := await self._queue.get()) is not self._END:
            yield item
        if self._error is not None:
            raise self._error


class StyleTransferService(pb_grpc.StyleTransferServicer):
    """One engine per device; ``info`` is the static part of ``GetServerInfoResponse``."""

    def __init__(self, engines: Sequence[Engine], devices: Sequence[str], limits: Limits,
                 info: pb.GetServerInfoResponse, metrics: Metrics | None = None,
                 models: ModeModels | None = None) -> None:
        self._engines = list(engines)
        self._devices = list(devices)
        self.models = models or ModeModels()
        self.workers = [Worker(e, d, self.models, i) for i, (e, d) in enumerate(zip(engines, devices, strict=True))]
        self.parity = pb.ParityGate(checked=False, ok=True, message="not run yet")
        self._gate: asyncio.Future[bool] | None = None
        self.limits = limits
        self.metrics = metrics or Metrics()
        self._info = info
        self._channels: dict[str, EventChannel | JobLog] = {}
        self.modes = frozenset(MODE_RUNNERS)
        batching = all(isinstance(engine, StyleTransfer) for engine in self._engines)  # fakes run jobs alone
        self.queue = JobQueue(self._run, self._job_done, workers=len(self._engines),
                              capacity=limits.queue_capacity, on_yield=self._job_yielded,
                              batch_runner=self._run_batch if batching else None,
                              max_batch=max_batch(limits, devices), batch_wait=limits.batch_wait)
        self.metrics.queue_depth.set_function(lambda: self.queue.depth)
        self.metrics.jobs_running.set_function(lambda: self.queue.running)
        self.peers = PeerGate(limits.calls_per_connection)
        self.budget = MemoryBudget(limits.admission_memory_bytes)
        self._reservations: dict[str, Reservation] = {}
        self.records = Records(limits.result_ttl)
        self.metrics.admitted_memory.set_function(lambda: self.budget.used)

    def start(self) -> None:
        """Start the workers; without :meth:`prepare` the service gates itself in the background."""
        self.queue.start()
        if self._gate is None:
            self._gate = asyncio.ensure_future(self._run_gate())

    async def prepare(self, config: ServerConfig) -> bool:
        """Take the mode settings from ``config`` and run the parity gate; returns whether to report SERVING.

        Call before :meth:`start` (the server then sets health from the answer); the gate's one log line says
        why a server refuses to serve.
        """
        self.models = ModeModels(ModeSettings.from_config(config))
        for worker in self.workers:
            worker.models = self.models
        self._gate = asyncio.ensure_future(self._run_gate())
        return await self._gate

    async def _run_gate(self) -> bool:
        self.parity = await asyncio.to_thread(self.models.parity_gate, self._engines[0])
        self.metrics.parity_gate_ok.set(1 if self.parity.ok else 0)
        return self.parity.ok

    @property
    def serving(self) -> bool:
        """False once the parity gate has failed."""
        return self.parity.ok

    def _check_serving(self) -> None:
        if not self.parity.ok:
            raise ServiceError(grpc.StatusCode.UNAVAILABLE,
                               f"this server failed its ONNX parity gate and refuses jobs: {self.parity.message}")

    async def Stylize(  # noqa: N802 - gRPC method name
        self, request: pb.StylizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StylizeEvent]:
        async with self.peers.slot(context.peer()):  # a connection's extra job calls wait here
            async for event in self._stylize(request, context):
                yield event

    async def _stylize(self, request: pb.StylizeRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[pb.StylizeEvent]:
        if request.request_id and CANCEL_METADATA in dict(context.invocation_metadata() or ()):
            await self._cancel_by_key(request, context)
            return
        record = await self._find_record(request, context)
        job: Job | None = None
        if record is None:
            job = await self._admit(request, context)
            record = self.records.of_job(job.id)
        if record is not None:
            record.followers += 1
        finished = False
        try:
            async for event in (record.log if record is not None else self._channels[job.id]):  # type: ignore[union-attr]
                yield event
            finished = True
        except ServiceError as error:
            finished = True
            await _abort(context, error)
        finally:
            if record is not None:
                record.followers -= 1
                if not finished and record.followers == 0 and not record.log.closed:
                    record.detached = time.monotonic()  # wait a while for a retry to attach
                    asyncio.get_running_loop().call_later(self.limits.detach_grace, self._detach_expired, record)
            elif job is not None:
                self._channels.pop(job.id, None)
                if not finished:  # the client cancelled, the deadline passed, or the server is stopping
                    self._abandon_image(job)

    def _abandon_image(self, job: Job) -> None:
        job.cancel.set()
        if self.queue.withdraw(job):
            self._release(job)
            self.records.forget(job.id)
            self.metrics.jobs.labels(code="CANCELLED").inc()
        _LOGGER.info("job %s abandoned by its caller", job.id, extra={"job_id": job.id})

    def _detach_expired(self, record: Record) -> None:
        """No retry attached within ``Limits.detach_grace``: the keyed job is abandoned like any other."""
        grace = self.limits.detach_grace
        if record.followers == 0 and record.job is not None and not record.log.closed and \
                time.monotonic() - record.detached >= grace * 0.99:
            self._abandon_image(record.job)

    async def _cancel_by_key(self, request: pb.StylizeRequest, context: grpc.aio.ServicerContext) -> None:
        """A caller's explicit cancel of its keyed job (the SDK's ``cancel()``): a broken connection and a
        cancelled call look alike to the server, which keeps a keyed job running for a retry after either."""
        key = (caller_of(context.invocation_metadata()), request.request_id)
        record = self.records.get(key)
        if record is not None and record.job is not None and not record.log.closed:
            _LOGGER.info("request_id %s: job %s cancelled by its caller", request.request_id, record.job_id,
                         extra={"job_id": record.job_id})
            self._abandon_image(record.job)

    async def _find_record(self, request: pb.StylizeRequest, context: grpc.aio.ServicerContext) -> Record | None:
        """The job this request's ``request_id`` names, when a call with it was admitted before (or None)."""
        if not request.request_id:
            return None
        try:
            check_key(request.request_id)
            key = (caller_of(context.invocation_metadata()), request.request_id)
            record = self.records.find(key, fingerprint(request))
        except ServiceError as error:
            self.metrics.jobs.labels(code=error.code.name).inc()
            await _abort(context, error)
            raise
        if record is not None:
            state = "finished" if record.log.closed else "running"
            self.metrics.attached.labels(state=state).inc()
            _LOGGER.info("request_id %s: attached to %s job %s", request.request_id, state, record.job_id,
                         extra={"job_id": record.job_id})
        return record

    async def GetServerInfo(  # noqa: N802 - gRPC method name
        self, request: pb.GetServerInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetServerInfoResponse:
        info = pb.GetServerInfoResponse()
        info.CopyFrom(self._info)
        info.queue_depth = self.queue.depth
        info.admission_memory_used_bytes = self.budget.used
        await asyncio.to_thread(describe, info, self.models, self.limits, self.parity)
        return info

    async def _admit(self, request: pb.StylizeRequest, context: grpc.aio.ServicerContext) -> Job:
        """Validate and enqueue, or abort the call. A full queue, a request over the pixel budget and one that
        does not fit the memory budget are refused before paying for decoding (:mod:`.admission`)."""
        received = time.monotonic()
        reservation: Reservation | None = None
        try:
            self._check_serving()
            self.queue.check_capacity()
            images = [("content", request.content), *((f"styles[{i}].image", s.image)
                                                      for i, s in enumerate(request.styles))]
            pixels = header_pixels(images, self.limits.max_request_pixels)
            reservation = self._reserve(footprint(pixels, request.ByteSize()))
            validated = await self._decode(reservation, validate_request, request, self.limits, self.modes,
                                           self.models.cyclegan_names)
            channel: EventChannel | JobLog = JobLog(asyncio.get_running_loop()) if request.request_id \
                else EventChannel(asyncio.get_running_loop())
            job = Job(ImageJob(functools.partial(validate_request, request, self.limits, self.modes,
                                                 self.models.cyclegan_names), self.limits.max_chunk_bytes),
                      channel.emit, decode_seconds=time.monotonic() - received, received=received,
                      batch_key=batch_key_of(validated) if self.queue.max_batch > 1 else None)
            position = self.queue.submit(job)
        except ServiceError as error:
            if reservation is not None and not reservation.deferred:
                reservation.release()
            self.metrics.jobs.labels(code=error.code.name).inc()
            await _abort(context, error)
            raise  # unreachable: abort raises
        self._reservations[job.id] = reservation
        self._channels[job.id] = channel
        if isinstance(channel, JobLog):
            key = (caller_of(context.invocation_metadata()), request.request_id)
            self.records.add(key, Record(fingerprint(request), job, channel, reservation))
        channel.emit(pb.StylizeEvent(job_id=job.id, accepted=pb.Accepted(
            job_id=job.id, queue_position=position, queue_capacity=self.queue.capacity)))
        _LOGGER.info("job %s accepted at position %d", job.id, position, extra={"job_id": job.id})
        return job

    async def _decode(self, reservation: Reservation, decode: Callable[..., T], *args: Any) -> T:
        """Run ``decode`` in a thread for at most ``Limits.decode_timeout`` seconds. A thread cannot be
        stopped: past the limit the request is refused at once and its reservation is held until the thread
        ends, so the budget still counts what the decode holds."""
        future = asyncio.get_running_loop().run_in_executor(None, decode, *args)
        done, _ = await asyncio.wait({future}, timeout=self.limits.decode_timeout)
        if not done:
            reservation.release_when_done(future)
            raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"the request's images took longer than {self.limits.decode_timeout:g}s to decode "
                               "(Limits.decode_timeout_seconds); send smaller or simpler images",
                               retry_after=self.limits.decode_timeout)
        return future.result()

    def _reserve(self, size: int) -> Reservation:
        """Reserve admitted memory, forgetting kept results (oldest first) when that makes room."""
        while True:
            try:
                return self.budget.reserve(size, self.queue.retry_hint())
            except ServiceError:
                if not self.records.evict_oldest():
                    raise

    def _release(self, job: Job) -> None:
        """The job ended or left the queue: its admitted memory is free again."""
        reservation = self._reservations.pop(job.id, None)
        if reservation is not None:
            reservation.release()

    def _run(self, job: Job, worker: int) -> object:
        """Worker thread: one job (an image, or a video stream's frames) on this worker's engine."""
        if isinstance(job.work, ImageJob):
            self.metrics.runs.inc()  # counted at the start: a job that fails has run too
        try:
            stats = job.work.run(job, self.workers[worker])
        finally:
            self.metrics.observe_cache(worker, self._engines[worker])
        if stats is None:  # a video session gave its worker up; it comes back with its next frame
            return YIELDED
        if isinstance(job.work, ImageJob):
            self.metrics.batch_size.observe(1)
        self.metrics.job_finished("OK", stats.iterations, stats.run_seconds, stats.total_seconds)
        return None

    def _run_batch(self, jobs: list[Job], worker: int) -> list[BaseException | None]:
        """Worker thread: compatible image jobs optimised together (:func:`.image_job.run_image_batch`)."""
        self.metrics.runs.inc(len(jobs))
        self.metrics.batch_size.observe(len(jobs))
        try:
            outcomes = run_image_batch(jobs, self.workers[worker])
        finally:
            self.metrics.observe_cache(worker, self._engines[worker])
        for outcome in outcomes:
            if not isinstance(outcome, BaseException):
                self.metrics.job_finished("OK", outcome.iterations, outcome.run_seconds, outcome.total_seconds)
        return [outcome if isinstance(outcome, BaseException) else None for outcome in outcomes]

    def _job_yielded(self, job: Job) -> None:
        """Loop thread: a session whose time slice ended with frames left goes to the end of the queue."""
        if isinstance(job.work, VideoSession) and job.work.take_requeue():
            self.queue.resubmit(job)

    def _push(self, job: Job, session: VideoSession, item: object) -> None:
        """Loop thread: hand a frame (or EOF) to the session, queueing it again if it had parked."""
        if session.push(item):
            self.queue.resubmit(job)

    # ------------------------------------------------------------------------------------------------ video

    async def StylizeVideo(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[pb.StylizeVideoRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StylizeVideoResponse]:
        async with self.peers.slot(context.peer()):
            async for response in self._stylize_video(request_iterator, context):
                yield response

    async def _stylize_video(self, request_iterator: AsyncIterator[pb.StylizeVideoRequest],
                             context: grpc.aio.ServicerContext) -> AsyncIterator[pb.StylizeVideoResponse]:
        job, session = await self._admit_video(request_iterator, context)
        channel = self._channels[job.id]
        assert isinstance(channel, EventChannel)  # video streams have one follower, no request_id
        slots = asyncio.Semaphore(self.limits.video_buffer_frames)
        main = asyncio.current_task()
        assert main is not None
        reader = asyncio.create_task(self._read_frames(request_iterator, job, session, slots, channel, main))
        finished = False
        try:
            async for response in channel:
                yield response
                if response.HasField("frame"):  # handed to gRPC: its slot may take the next frame
                    session.buffered -= 1
                    slots.release()
            finished = True
        except ServiceError as error:
            finished = True
            await _abort(context, error)
        finally:
            reader.cancel()
            self._channels.pop(job.id, None)
            if not finished or job.cancel.is_set():  # the caller went away, or sent a bad frame
                self._abandon(job, session)

    def _abandon(self, job: Job, session: VideoSession) -> None:
        """Stop the worker within one frame (or take the job out of the queue if it has not started)."""
        job.cancel.set()
        self._push(job, session, EOF)  # wakes a worker waiting for the next frame, or queues a parked session
        if self.queue.withdraw(job):
            self._release(job)
            self.metrics.jobs.labels(code="CANCELLED").inc()
        _LOGGER.info("video job %s ended early", job.id, extra={"job_id": job.id})

    async def _admit_video(self, requests: AsyncIterator[pb.StylizeVideoRequest],
                           context: grpc.aio.ServicerContext) -> tuple[Job, VideoSession]:
        """Read and validate the config, then enqueue (or abort the call)."""
        received = time.monotonic()
        reservation: Reservation | None = None
        try:
            self._check_serving()
            self.queue.check_capacity()
            first = await anext(aiter(requests), None)
            if first is None or not first.HasField("config"):
                raise ServiceError.invalid("config", "the first StylizeVideo message must be a VideoConfig")
            pixels = header_pixels(((f"styles[{i}].image", s.image) for i, s in enumerate(first.config.styles)),
                                   self.limits.max_request_pixels, "config.")
            frames = self.limits.video_buffer_frames * self.limits.max_frame_bytes
            reservation = self._reserve(footprint(pixels, first.ByteSize() + frames))
            video = await self._decode(reservation, validate_video, first.config, self.limits, self.modes,
                                       self.models.cyclegan_names)
            channel = EventChannel(asyncio.get_running_loop())
            session = VideoSession(video, self.limits.max_frame_bytes, self.limits.max_pixels,
                                   self.limits.max_size, self.limits.video_linger, self.limits.video_slice,
                                   others_waiting=lambda: self.queue.depth > 0)
            job = Job(session, channel.emit, decode_seconds=time.monotonic() - received, received=received)
            position = self.queue.submit(job)
        except ServiceError as error:
            if reservation is not None and not reservation.deferred:
                reservation.release()
            self.metrics.jobs.labels(code=error.code.name).inc()
            await _abort(context, error)
            raise
        self._reservations[job.id] = reservation
        self._channels[job.id] = channel
        channel.emit(pb.StylizeVideoResponse(job_id=job.id, accepted=pb.VideoAccepted(
            job_id=job.id, queue_position=position, buffer_frames=self.limits.video_buffer_frames)))
        _LOGGER.info("video job %s accepted at position %d", job.id, position, extra={"job_id": job.id})
        return job, session

    async def _read_frames(self, requests: AsyncIterator[pb.StylizeVideoRequest], job: Job,
                           session: VideoSession, slots: asyncio.Semaphore, channel: EventChannel,
                           main: asyncio.Task[Any]) -> None:
        """Take a slot, then read one frame: with no slot free the server stops reading (back-pressure).

        A stream that sends no frame, or reads none of its replies, for ``Limits.video_idle`` seconds is ended
        with DEADLINE_EXCEEDED: it holds no worker meanwhile (the session parks) but it holds its admitted
        memory. A caller that reads nothing cannot be sent the status (the RPC is stuck writing to it), so the
        RPC is cancelled shortly after.
        """
        index = 0
        idle = self.limits.video_idle
        try:
            while True:
                if await _within(slots.acquire(), idle) is _TIMED_OUT:
                    raise ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED, f"the client read no reply for {idle:g}s "
                                       "(Limits.video_idle_seconds); the stream is closed")
                message = await _within(anext(aiter(requests), None), idle)
                if message is _TIMED_OUT:
                    raise ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED, f"no frame for {idle:g}s "
                                       "(Limits.video_idle_seconds); the stream is closed — send frames or end it")
                if message is None:
                    break
                self._push(job, session, self._frame_bytes(message, index))
                session.buffered += 1
                session.max_buffered = max(session.max_buffered, session.buffered)
                index += 1
        except ServiceError as error:
            job.cancel.set()
            channel.close(error)
            if error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                asyncio.get_running_loop().call_later(2.0, main.cancel)  # no-op once the RPC has ended
        finally:
            self._push(job, session, EOF)

    def _frame_bytes(self, message: pb.StylizeVideoRequest, index: int) -> bytes:
        if not message.HasField("frame"):
            raise ServiceError.invalid(f"frames[{index}]", "after the config, every message must be a frame")
        frame = message.frame
        if frame.index != index:
            raise ServiceError.invalid(f"frames[{index}].index", f"is {frame.index}; frames must come in order")
        if not frame.image or len(frame.image) > self.limits.max_frame_bytes:
            raise ServiceError.invalid(f"frames[{index}].image", f"must be 1 to {self.limits.max_frame_bytes} "
                                       f"bytes, got {len(frame.image)}")
        return frame.image

    def _job_done(self, job: Job, error: BaseException | None) -> None:
        """Loop thread: end the job's stream (the RPC may already be gone)."""
        failure = None if error is None else from_engine_error(error, job.id)
        if failure is not None:
            self.metrics.jobs.labels(code=failure.code.name).inc()
        channel = self._channels.pop(job.id, None)
        if channel is not None:
            channel.close(failure)
        if (failure is None or failure.code in _KEPT_FAILURES) and self.records.finish(job.id):
            self._reservations.pop(job.id, None)  # now held by the record, for Limits.result_ttl
        else:
            self.records.forget(job.id)
            self._release(job)


def max_batch(limits: Limits, devices: Sequence[str]) -> int:
    """``Limits.max_batch``, with 0 (auto) resolved: batching pays where an iteration is bound by kernel
    launches (a GPU at service sizes), not on a CPU, where one job already keeps the cores busy."""
    if limits.max_batch:
        return limits.max_batch
    return AUTO_GPU_BATCH if any(device.startswith("cuda") for device in devices) else 1


async def _within(awaitable: Awaitable[Any], seconds: float) -> Any:
    """``await awaitable`` for at most ``seconds``; :data:`_TIMED_OUT` after that."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        return _TIMED_OUT


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
