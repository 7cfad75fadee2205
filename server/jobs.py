"""One job's life in a worker thread: draw the seed, run the engine, stream its steps, encode and chunk.

The engine runs synchronously in a worker thread; everything it reports goes out through ``job.emit`` (thread
safe). Cancellation is a :class:`threading.Event` that the progress callback checks on every step, raising
:class:`~styletx_core.errors.Cancelled`: a cancelled call or an expired deadline frees the worker within one
iteration (grpc ``examples/python/cancellation``).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image

from styletx.v1 import styletx_pb2 as pb
from styletx_core.errors import Cancelled
from styletx_core.imageio import encode_image
from styletx_core.options import StylizeOptions
from styletx_core.progress import Callback, Iterate, StylizeResult

from . import events
from .validation import ValidatedRequest

__all__ = ["MODE_RUNNERS", "Engine", "Job", "JobStats", "run_job"]

_LOGGER = logging.getLogger(__name__)


class Engine(Protocol):
    """What the service needs of :class:`styletx_core.engine.StyleTransfer`."""

    def stylize(self, content: Image.Image, styles: Sequence[Image.Image], opts: StylizeOptions,
                callback: Callback | None = None, init_image: Image.Image | None = None) -> StylizeResult: ...

    def variations(self, content: Image.Image, styles: Sequence[Image.Image], count: int,
                   opts: StylizeOptions | None = None,
                   callback: Callback | None = None) -> list[StylizeResult]: ...


ModeRunner = Callable[[Engine, ValidatedRequest, Callback], StylizeResult]


def _optimize(engine: Engine, request: ValidatedRequest, callback: Callback) -> StylizeResult:
    if request.variation:  # variations(count=1) with seed s is variation k of seed s - k: see the proto
        return engine.variations(request.content, request.styles, 1, request.options, callback)[0]
    return engine.stylize(request.content, request.styles, request.options, callback=callback)


#: How each mode runs. Modes missing here answer UNIMPLEMENTED; FAST/PRESET/HYBRID/CYCLEGAN add themselves.
MODE_RUNNERS: dict[int, ModeRunner] = {pb.MODE_OPTIMIZE: _optimize}


@dataclass
class Job:
    """A validated request on its way through the queue. ``emit`` must be callable from any thread."""

    request: ValidatedRequest
    emit: Callable[[pb.StylizeEvent], None]
    decode_seconds: float = 0.0
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    cancel: threading.Event = field(default_factory=threading.Event)
    received: float = field(default_factory=time.monotonic)
    """When the request arrived (before decoding)."""
    queued: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class JobStats:
    """What a finished job tells the metrics."""

    iterations: int
    run_seconds: float
    total_seconds: float


def run_job(job: Job, engine: Engine, device: str, chunk_bytes: int) -> JobStats:
    """Run ``job`` to the end; raises what the engine raises (``Cancelled`` when the job was cancelled)."""
    started = time.monotonic()
    if job.cancel.is_set():
        raise Cancelled()
    request = _with_seed(job.request)
    job.emit(_started(job, request.options, device, started - job.queued))
    runner = MODE_RUNNERS[request.mode]
    result = runner(engine, request, _callback(job, request))
    finished = time.monotonic()
    data = encode_image(result.image, request.output_format)
    for event in events.result_chunks(job.id, data, request.output_format, result.image.size, chunk_bytes):
        job.emit(event)
    done = time.monotonic()
    timings = {"queue_seconds": started - job.queued, "decode_seconds": job.decode_seconds,
               "run_seconds": finished - started, "encode_seconds": done - finished,
               "total_seconds": done - job.received}
    job.emit(events.completed(job.id, result, data, timings))
    _LOGGER.info("job %s done: %d iterations in %.2fs", job.id, result.iterations, finished - started,
                 extra={"job_id": job.id, "device": device})
    return JobStats(result.iterations, finished - started, done - job.received)


def _with_seed(request: ValidatedRequest) -> ValidatedRequest:
    """Draw the seed here rather than in the engine, so Started can already report it."""
    if request.options.seed is not None:
        return request
    options = request.options.replace(seed=secrets.randbelow(2**31))  # the engine's own range
    return ValidatedRequest(**{**request.__dict__, "options": options})


def _started(job: Job, options: StylizeOptions, device: str, queue_seconds: float) -> pb.StylizeEvent:
    scales = options.scales()
    total = options.iterations + options.coarse_iterations * (len(scales) - 1)
    return pb.StylizeEvent(job_id=job.id, started=pb.Started(
        device=device, seed=options.seed or 0, scales=scales, total_iterations=total,
        queue_seconds=queue_seconds))


def _callback(job: Job, request: ValidatedRequest) -> Callback:
    """The engine's per-step callback: check for cancellation, then report the step (and a preview)."""

    def callback(step: Iterate) -> None:
        if job.cancel.is_set():
            raise Cancelled()
        job.emit(events.progress(job.id, step))
        if step.preview is not None:
            job.emit(events.preview(job.id, step.iteration, step.preview(), request.preview_format,
                                    request.preview_max_side))

    return callback
