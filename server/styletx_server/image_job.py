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
from collections.abc import Callable
from dataclasses import dataclass, replace

from styletx_proto.v1 import styletx_pb2 as pb

from styletx_core.errors import Cancelled
from styletx_core.imageio import encode_image
from styletx_core.options import StylizeOptions
from styletx_core.progress import Callback, Iterate, StylizeResult

from . import events, tracing
from .job import Job, JobStats
from .modes import QualityOutcome
from .modes.runners import MODE_RUNNERS
from .validation import ValidatedRequest
from .worker import Worker

__all__ = ["ImageJob"]

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
            return self._run(job, worker)

    def _run(self, job: Job, worker: Worker) -> JobStats:
        started = time.monotonic()
        if job.cancel.is_set():
            raise Cancelled()
        with tracing.phase("decode"):
            request = _with_seed(self.request() if callable(self.request) else self.request)
        runner = MODE_RUNNERS[request.mode]
        scales, total = runner.schedule(worker, request)
        job.emit(_started(job, request.options, worker.device, started - job.queued, scales, total))
        scale_spans = tracing.ScaleSpans()
        try:
            result = runner.run(worker, request, _callback(job, request, scale_spans))
        finally:
            scale_spans.close()
        finished = time.monotonic()
        with tracing.phase("encode", format=request.output_format):
            data = encode_image(result.image, request.output_format)
            for event in events.result_chunks(job.id, data, request.output_format, result.image.size,
                                              self.chunk_bytes):
                job.emit(event)
        done = time.monotonic()
        with tracing.phase("score"):
            quality = _quality(job, worker, request, result)
        timings = {"queue_seconds": started - job.queued, "decode_seconds": job.decode_seconds,
                   "run_seconds": finished - started, "encode_seconds": done - finished,
                   "total_seconds": done - job.received, "score_seconds": time.monotonic() - done}
        job.emit(events.completed(job.id, result, data, timings, **quality.completed_fields()))
        _LOGGER.info("job %s done: %d iterations in %.2fs", job.id, result.iterations, finished - started,
                     extra={"job_id": job.id, "device": worker.device})
        return JobStats(result.iterations, finished - started, done - job.received)


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


def _callback(job: Job, request: ValidatedRequest, scale_spans: tracing.ScaleSpans) -> Callback:
    """The engine's per-step callback: check for cancellation, then report the step (and a preview)."""

    def callback(step: Iterate) -> None:
        if job.cancel.is_set():
            raise Cancelled()
        scale_spans.step(step.scale_index, step.scale_count, step.width, step.height)
        job.emit(events.progress(job.id, step))
        if step.preview is not None:
            job.emit(events.preview(job.id, step.iteration, step.preview(), request.preview_format,
                                    request.preview_max_side))

    return callback
