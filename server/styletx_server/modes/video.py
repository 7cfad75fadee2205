"""StylizeVideo: a bidirectional stream of frames through one worker, with bounded memory.

Flow control is a budget of ``Limits.video_buffer_frames`` slots per stream. The RPC's reader takes a slot
*before* it reads the next frame off the wire and the slot is given back only once that frame's stylised twin
has been handed to gRPC. So a stream never holds more frames than the budget, whatever the client does: a
client that sends faster than the worker stylises (or reads its results slowly) is held back by HTTP/2 flow
control, because the server simply stops reading.

The work runs in a worker of the ordinary job queue, so a video stream waits its turn, occupies one device,
and is cancelled (within one frame) like any job. The per-frame algorithm, optical-flow consistency included,
is :class:`styletx_core.video.StreamStylizer`'s.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from styletx_proto.v1 import styletx_pb2 as pb

from styletx_core.errors import Cancelled
from styletx_core.imageio import encode_image, load_image, resize_long_side
from styletx_core.options import StylizeOptions
from styletx_core.regions import StyleControl

from ..errors import ServiceError
from ..events import FORMAT_ENUMS
from ..job import Job, JobStats
from ..validation import (
    Limits,
    ModelCatalog,
    check_mode,
    check_mode_fields,
    decode,
    fast_params,
    output_format,
    params_to_options,
    regional_controls,
    style_blend,
    tiling,
)
from ..worker import Worker

__all__ = ["EOF", "ValidatedVideo", "VideoSession", "validate_video"]

_LOGGER = logging.getLogger(__name__)
#: Put on a session's inbox after the last frame (the client half-closed) or to wake a cancelled worker.
EOF = object()
VIDEO_MODES = frozenset({pb.MODE_FAST, pb.MODE_PRESET, pb.MODE_CYCLEGAN, pb.MODE_OPTIMIZE, pb.MODE_HYBRID})
#: Proto mode → the name :func:`styletx_core.video.frames.frame_stylizer` (and the CLI's --mode) uses.
_VIDEO_MODE_NAMES: dict[int, str] = {pb.MODE_FAST: "fast", pb.MODE_PRESET: "preset", pb.MODE_CYCLEGAN: "cyclegan",
                                     pb.MODE_OPTIMIZE: "optimize", pb.MODE_HYBRID: "hybrid"}


@dataclass(frozen=True)
class ValidatedVideo:
    """A VideoConfig that passed every check."""

    mode: int
    styles: list[Image.Image]
    options: StylizeOptions
    preset: str
    model_name: str
    strength: float
    processing_size: int | None
    tile: int
    overlap: int
    consistency: bool
    alpha: float
    output_format: str
    controls: tuple[StyleControl | None, ...] = ()
    """Fixed per-style masks and layers (``config.styles[i].mask`` / ``.layers``), for OPTIMIZE and HYBRID."""


def validate_video(config: pb.VideoConfig, limits: Limits, modes: frozenset[int],
                   catalog: ModelCatalog | None = None) -> ValidatedVideo:
    """Check the stream's config like a Stylize request (the same field names, under ``config.``)."""
    mode = config.mode or pb.MODE_FAST
    check_mode(mode, modes & VIDEO_MODES, "config.mode")
    check_mode_fields(mode, config.preset, config.model_name, catalog, "config.")
    strength, processing_size = fast_params(config.fast, limits, "config.fast.")
    tile, overlap = tiling(config.cyclegan, "config.cyclegan.")
    if not config.styles and mode not in (pb.MODE_PRESET, pb.MODE_CYCLEGAN):
        raise ServiceError.invalid("config.styles", "needs at least one style image")
    if len(config.styles) > limits.max_styles:
        raise ServiceError.invalid("config.styles",
                                   f"has {len(config.styles)} images; the limit is {limits.max_styles}")
    options = params_to_options(config.params, style_blend(config.styles, "config.styles"), "config.params.")
    alpha = config.alpha if config.HasField("alpha") else 0.6
    if not 0.0 <= alpha <= 0.95:
        raise ServiceError.invalid("config.alpha", f"must be between 0 and 0.95, got {alpha}")
    for index, style in enumerate(config.styles):
        if style.preset:
            raise ServiceError.invalid(f"config.styles[{index}].preset",
                                       "region presets are for single images (StylizeRequest), not video")
    styles = [decode(s.image, f"config.styles[{i}].image", limits.max_pixels)
              for i, s in enumerate(config.styles)]
    consistency = config.consistency if config.HasField("consistency") else True
    # Frames are not known yet: masks are checked at a square of the output size (the engine checks each frame).
    controls, _ = regional_controls(config.styles, b"", (options.size, options.size), options, limits, "config.")
    if controls and mode not in (pb.MODE_OPTIMIZE, pb.MODE_HYBRID):
        raise ServiceError.invalid("config.styles", "masks and per-style layers need MODE_OPTIMIZE or MODE_HYBRID")
    return ValidatedVideo(mode, styles, options, config.preset, config.model_name, strength, processing_size,
                          tile, overlap, consistency, alpha,
                          output_format(config.output_format, "config.output_format", "png"), controls)


class _State(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    PARKED = "parked"
    """Gave its worker up with no frame to stylise; its next frame (or EOF) queues it again."""
    YIELDING = "yielding"
    """Gave its worker up after its time slice, with frames left: the queue takes it back at once."""


@dataclass
class VideoSession:
    """The :class:`~styletx_server.job.Work` of one StylizeVideo stream, and the hand-over between the RPC
    (event loop) and the worker thread.

    ``inbox`` is a thread-safe queue of encoded frames (and :data:`EOF`); the worker sends its responses
    through the job's ``emit``. Neither needs a bound of its own: the RPC's slot budget bounds them both.

    Fairness (docs/architecture.md): a session holds a worker only while it has frames. With its inbox empty it
    waits ``linger`` seconds for the next frame (none when other work waits), then *parks*: :meth:`run`
    returns None and the worker is free; :meth:`push` of the next frame queues the session again, at the end of
    the queue. While other work waits, a session also gives its worker up after ``time_slice`` seconds of
    frames. So an idle stream, or one whose client stopped reading (the slot budget then stops the frames),
    holds no worker, and an image job waits behind each busy stream for one slice at most.
    """

    config: ValidatedVideo
    max_frame_bytes: int
    max_pixels: int
    max_size: int
    """Long side a frame is reduced to when larger (the server's ``--max-size``, as for images)."""
    linger: float = 0.25
    time_slice: float = 2.0
    others_waiting: Callable[[], bool] = lambda: False
    """Whether other work waits for a worker (read from the worker thread)."""
    inbox: queue.Queue[object] = field(default_factory=queue.Queue)
    frames: int = 0
    """Frames stylised (worker thread)."""
    buffered: int = 0
    """Frames received and not yet handed back to gRPC (event loop)."""
    max_buffered: int = 0
    _state: _State = _State.QUEUED
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _started: float | None = None
    _run_seconds: float = 0.0
    _queue_seconds: float = 0.0
    _stream: Any = None
    _stream_worker: int | None = None
    _last: tuple[np.ndarray, np.ndarray] | None = None

    def queued(self, job_id: str, position: int) -> pb.StylizeVideoResponse:
        return pb.StylizeVideoResponse(job_id=job_id, queue_update=pb.QueueUpdate(queue_position=position))

    def push(self, item: object) -> bool:
        """Event loop: hand the worker a frame (or EOF); True when the session was parked and must be queued."""
        self.inbox.put(item)
        with self._lock:
            if self._state is not _State.PARKED:
                return False
            self._state = _State.QUEUED
            return True

    def take_requeue(self) -> bool:
        """Event loop, after :meth:`run` returned None: True when the session must be queued again at once (its
        slice ended with frames left); False when it parked (:meth:`push` will queue it)."""
        with self._lock:
            if self._state is not _State.YIELDING:
                return False
            self._state = _State.QUEUED
            return True

    def run(self, job: Job, worker: Worker) -> JobStats | None:
        """Worker thread: stylise frames until :data:`EOF` (then VideoCompleted, and the stats) or until the
        session gives its worker up (None; see the class docstring)."""
        began = time.monotonic()
        with self._lock:
            self._state = _State.RUNNING
        if self._started is None:
            self._started, self._queue_seconds = began, began - job.queued
            job.emit(pb.StylizeVideoResponse(job_id=job.id, started=pb.VideoStarted(
                device=worker.device, queue_seconds=self._queue_seconds)))
        stream = self._stream_for(worker)
        try:
            while (item := self._next(job, began)) is not EOF:
                if item is None:
                    return None
                assert isinstance(item, bytes)
                job.emit(pb.StylizeVideoResponse(job_id=job.id, frame=_stylize_frame(stream, self, item)))
                self.frames += 1
        finally:
            self._run_seconds += time.monotonic() - began
        if job.cancel.is_set():
            raise Cancelled()
        seconds = self._run_seconds
        job.emit(pb.StylizeVideoResponse(job_id=job.id, completed=pb.VideoCompleted(
            frames=self.frames, run_seconds=seconds, frames_per_second=self.frames / seconds if seconds > 0 else 0.0,
            queue_seconds=self._queue_seconds, max_buffered_frames=self.max_buffered)))
        return JobStats(0, seconds, time.monotonic() - job.received)  # frames are not iterations

    def _next(self, job: Job, began: float) -> object:
        """The next frame or EOF; None when the session gives its worker up instead."""
        if job.cancel.is_set():
            raise Cancelled()
        if self.others_waiting() and time.monotonic() - began >= self.time_slice and not self.inbox.empty():
            with self._lock:
                self._state = _State.YIELDING
            return None
        try:
            return self.inbox.get(timeout=0.0 if self.others_waiting() else self.linger)
        except queue.Empty:
            pass
        with self._lock:  # push() puts first, then looks at the state: no frame can slip between the two
            if not self.inbox.empty():
                return self.inbox.get_nowait()
            self._state = _State.PARKED
        return None

    def _stream_for(self, worker: Worker) -> Any:
        """The stream's StreamStylizer on this worker's networks; one moved to another worker continues from the
        last frame (``prime``), so the temporal consistency carries over."""
        from styletx_core.video import StreamStylizer
        from styletx_core.video.frames import pipeline_mode

        if self._stream is None or self._stream_worker != worker.index:
            video = self.config
            self._stream = StreamStylizer(_frame_stylizer(worker, video), pipeline_mode(_VIDEO_MODE_NAMES[video.mode]),
                                          video.consistency, video.alpha)
            self._stream_worker = worker.index
            if self._last is not None:
                self._stream.prime(*self._last)
        return self._stream


def _frame_stylizer(worker: Worker, video: ValidatedVideo) -> Any:
    """The :class:`~styletx_core.video.FrameStylizer` of the stream's mode: the CLI's factory, fed the server's
    shared networks."""
    from styletx_core.video.frames import Networks, frame_stylizer

    networks = Networks(engine=lambda: worker.engine, fast=lambda: worker.models.fast(worker.device),
                        preset=lambda: worker.models.preset(worker.device),
                        generator=lambda name: worker.models.generators(worker.index, worker.device).get(name))
    return frame_stylizer(_VIDEO_MODE_NAMES[video.mode], networks, video.styles, video.options,
                          presets=[video.preset], model_name=video.model_name, strength=video.strength,
                          processing_size=video.processing_size, alpha=video.alpha, tile=video.tile,
                          overlap=video.overlap, controls=video.controls)


def _stylize_frame(stream: Any, session: VideoSession, data: bytes) -> pb.VideoFrame:
    index = session.frames
    image = load_image(data, max_pixels=session.max_pixels, field=f"frames[{index}].image")
    if max(image.size) > session.max_size:  # frames obey --max-size like images: reduced, never refused
        image = resize_long_side(image, session.max_size)
    frame = np.asarray(image, dtype=np.uint8)
    output = stream.process(frame)
    session._last = (frame, output)
    fmt = session.config.output_format
    encoded = encode_image(Image.fromarray(output), fmt)
    if len(encoded) > session.max_frame_bytes:
        raise ServiceError.invalid(f"frames[{index}].image", f"stylised, it encodes to {len(encoded)} bytes in "
                                   f"{fmt}, over the {session.max_frame_bytes}-byte message budget; send "
                                   "smaller frames or ask for JPEG")
    return pb.VideoFrame(index=index, image=encoded, format=FORMAT_ENUMS[fmt], width=output.shape[1],
                         height=output.shape[0])
