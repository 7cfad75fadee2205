"""An image job's life in a worker thread: draw the seed, run the mode, stream its steps, encode, chunk, score.

The engine runs synchronously in a worker thread; everything it reports goes out through ``job.emit`` (thread
safe). Cancellation is a :class:`threading.Event` that the progress callback checks on every step, raising
:class:`~styletx_core.errors.Cancelled`: a cancelled call or an expired deadline frees the worker within one
iteration (grpc ``examples/python/cancellation``).

:class:`ImageJob` is the :class:`~styletx_server.job.Work` of a Stylize call. Each mode is a
:class:`ModeRunner` in :data:`MODE_RUNNERS` (:mod:`.modes.runners`): how it runs on a
:class:`~styletx_server.worker.Worker` (the engine plus the shared networks of :mod:`.modes`) and which schedule
Started announces. Quality scores are computed after the last result chunk, so the client has the image before the
VGG pass that scores it.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import cast

from styletx_proto.v1 import styletx_pb2 as pb

from styletx_core.batch import BatchJob, batch_key, fitting_batch, stylize_batch
from styletx_core.engine import StyleTransfer
from styletx_core.errors import Cancelled
from styletx_core.imageio import encode_image
from styletx_core.options import StylizeOptions
from styletx_core.progress import Iterate, StylizeResult

from . import events, tracing
from .job import Job, JobStats
from .modes import QualityOutcome
from .modes.runners import MODE_RUNNERS
from .validation import ValidatedRequest
from .worker import Worker

__all__ = ["ImageJob", "Progress", "batch_key_of", "run_image_batch"]

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageJob:
    """The work of one Stylize call: a validated request, the size of its result chunks.

    The server passes a loader instead of the request: the queued job then holds its encoded request, not
    the decoded images, and decodes again when it starts (:mod:`.admission`).
    """

    request: ValidatedRequest | Callable[[], ValidatedRequest]
    chunk_bytes: int

    def queued(self, job_id: str, position: int) -> pb.StylizeEvent:
        return pb.StylizeEvent(job_id=job_id, queue_update=pb.QueueUpdate(queue_position=position))

    def run(self, job: Job, worker: Worker) -> JobStats:
        """Run to the end; raises what the mode raises (``Cancelled`` when the job was cancelled)."""
        with tracing.job_span(job.trace_context, job.id, job.queued):
            started, request = self.begin(job, worker)
            progress = Progress(job, request)
            try:
                result = MODE_RUNNERS[request.mode].run(worker, request, progress)
            finally:
                progress.scale_spans.close()
            return self.finish(job, worker, request, result, started, time.monotonic(), progress.seconds)

    def begin(self, job: Job, worker: Worker) -> tuple[float, ValidatedRequest]:
        """Decode the request, draw its seed and announce Started; returns when it started and the request."""
        started = time.monotonic()
        if job.cancel.is_set():
            raise Cancelled()
        with tracing.phase("decode"):
            request = _with_seed(self.request() if callable(self.request) else self.request)
        scales, total = MODE_RUNNERS[request.mode].schedule(worker, request)
        job.emit(_started(job, request.options, worker.device, started - job.queued, scales, total))
        return started, request

    def finish(self, job: Job, worker: Worker, request: ValidatedRequest, result: StylizeResult, started: float,
               finished: float, events_seconds: float = 0.0) -> JobStats:
        """Encode and send the image, score it, and send Completed with the timings of each phase."""
        encoding = time.monotonic()
        with tracing.phase("encode", format=request.output_format):
            data = encode_image(result.image, request.output_format)
            for event in events.result_chunks(job.id, data, request.output_format, result.image.size,
                                              self.chunk_bytes):
                job.emit(event)
        done = time.monotonic()
        with tracing.phase("score"):
            quality = _quality(job, worker, request, result)
        timings = {"queue_seconds": started - job.queued, "decode_seconds": job.decode_seconds,
                   "run_seconds": finished - started, "encode_seconds": done - encoding,
                   "total_seconds": done - job.received, "score_seconds": time.monotonic() - done,
                   "events_seconds": events_seconds}
        job.emit(events.completed(job.id, result, data, timings, **quality.completed_fields()))
        _LOGGER.info("job %s done: %d iterations in %.2fs", job.id, result.iterations, finished - started,
                     extra={"job_id": job.id, "device": worker.device})
        return JobStats(result.iterations, finished - started, done - job.received)


def batch_key_of(request: ValidatedRequest) -> tuple[object, ...] | None:
    """The request's batch key (:func:`styletx_core.batch.batch_key`) if it can run in a batch: a plain
    OPTIMIZE job (variations and the other modes run alone)."""
    if request.mode != pb.MODE_OPTIMIZE or request.variation:
        return None
    return batch_key(request.options, request.content.size)


def run_image_batch(jobs: Sequence[Job], worker: Worker) -> list[JobStats | BaseException]:
    """Worker thread: OPTIMIZE jobs with equal batch keys optimised together, each streaming its own events.

    Jobs are split into batches the memory plan fits without changing any job's plan (history, checkpointing)
    before any work; each job's outcome is its stats or the exception that ended it, alone.
    """
    outcomes: list[JobStats | BaseException | None] = [None] * len(jobs)
    begun: list[tuple[int, float, Progress]] = []
    for index, job in enumerate(jobs):
        try:
            started, request = cast(ImageJob, job.work).begin(job, worker)
        except Exception as error:  # cancelled while queued, or no longer decodable: this job only
            outcomes[index] = error
            continue
        begun.append((index, started, Progress(job, request)))
    while begun:
        first = begun[0][2].request
        engine = worker.engine
        assert isinstance(engine, StyleTransfer), "only the real engine batches (see the service)"
        count = fitting_batch(engine, first.options, first.content.size, len(begun))
        chunk, begun = begun[:count], begun[count:]
        try:
            results = stylize_batch(engine, [BatchJob(p.request.content, p.request.styles, p.request.options, p,
                                                      controls=p.request.controls or None,
                                                      content_strength=p.request.content_strength)
                                             for _, _, p in chunk])
        except Exception as error:  # the batch as a whole (e.g. its memory plan): its jobs, not earlier ones
            results = [error] * len(chunk)
        finished = time.monotonic()
        for (index, started, progress), result in zip(chunk, results, strict=True):
            progress.scale_spans.close()
            outcomes[index] = result if isinstance(result, BaseException) else _finish_safely(
                progress, worker, result, started, finished)
    return [outcome if outcome is not None else RuntimeError("job ended without an outcome")
            for outcome in outcomes]


def _finish_safely(progress: Progress, worker: Worker, result: StylizeResult, started: float,
                   finished: float) -> JobStats | BaseException:
    job = progress.job
    try:
        return cast(ImageJob, job.work).finish(job, worker, progress.request, result, started, finished,
                                               progress.seconds)
    except Exception as error:  # this job's encoding or cancellation: the batch's other jobs go on
        return error


def _quality(job: Job, worker: Worker, request: ValidatedRequest, result: StylizeResult) -> QualityOutcome:
    """Scores of the result, or why there are none. A scoring failure never fails the job: the image is
    already with the client, so it is logged and reported in ``quality_unavailable``."""
    if request.skip_quality:
        return QualityOutcome.unavailable("skipped: the request set skip_quality")
    if not request.styles:
        return QualityOutcome.unavailable("no style image to compare with (PRESET and CYCLEGAN have none)")
    if job.cancel.is_set():
        raise Cancelled()
    try:
        return worker.models.score(worker.engine, request.content, request.styles, result.image,
                                   request.options)
    except Exception as error:  # the job succeeded; only its scores did not
        _LOGGER.warning("job %s: quality scores failed: %s", job.id, error, extra={"job_id": job.id})
        return QualityOutcome.unavailable(f"scoring failed: {type(error).__name__}: {error}")


def _with_seed(request: ValidatedRequest) -> ValidatedRequest:
    """Draw the seed here rather than in the engine, so Started can already report it."""
    if request.options.seed is not None:
        return request
    options = request.options.replace(seed=secrets.randbelow(2**31))  # the engine's own range
    return replace(request, options=options)


def _started(job: Job, options: StylizeOptions, device: str, queue_seconds: float, scales: list[int],
             total: int) -> pb.StylizeEvent:
    return pb.StylizeEvent(job_id=job.id, started=pb.Started(
        device=device, seed=options.seed or 0, scales=scales, total_iterations=total,
        queue_seconds=queue_seconds))


@dataclass
class Progress:
    """The engine's per-step callback for one job: check for cancellation, report the step (and a preview),
    open a trace span per scale, and count what that costs (``Timings.events_seconds``: the service's own
    share of the run)."""

    job: Job
    request: ValidatedRequest
    seconds: float = 0.0
    scale_spans: tracing.ScaleSpans = field(default_factory=tracing.ScaleSpans)

    def __call__(self, step: Iterate) -> None:
        start = time.perf_counter()
        try:
            if self.job.cancel.is_set():
                raise Cancelled()
            self.scale_spans.step(step.scale_index, step.scale_count, step.width, step.height)
            if step.loss_fresh:  # a batch on a GPU reads its losses every few iterations: report those
                self.job.emit(events.progress(self.job.id, step))
            if step.preview is not None:
                self.job.emit(events.preview(self.job.id, step.iteration, step.preview(),
                                             self.request.preview_format, self.request.preview_max_side))
        finally:
            self.seconds += time.perf_counter() - start
