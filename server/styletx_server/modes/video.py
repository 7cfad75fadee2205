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

import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from google.protobuf.message import Message
from PIL import Image
from styletx_proto.v1 import styletx_pb2 as pb

from styletx_core.errors import Cancelled
from styletx_core.imageio import encode_image, load_image
from styletx_core.options import StylizeOptions

from ..errors import ServiceError
from ..events import FORMAT_ENUMS
from ..validation import (
    Limits,
    ModelCatalog,
    check_mode,
    check_mode_fields,
    decode,
    fast_params,
    output_format,
    params_to_options,
    style_blend,
    tiling,
)

if TYPE_CHECKING:
    from ..jobs import Worker

__all__ = ["EOF", "ValidatedVideo", "VideoSession", "frame_stylizer", "run_video", "validate_video"]

_LOGGER = logging.getLogger(__name__)
#: Put on a session's inbox after the last frame (the client half-closed) or to wake a cancelled worker.
EOF = object()
VIDEO_MODES = frozenset({pb.MODE_FAST, pb.MODE_PRESET, pb.MODE_CYCLEGAN, pb.MODE_OPTIMIZE, pb.MODE_HYBRID})
_STREAM_MODE: dict[int, str] = {pb.MODE_OPTIMIZE: "optimize", pb.MODE_HYBRID: "hybrid"}  # others: feed-forward ("fast")


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
    styles = [decode(s.image, f"config.styles[{i}].image", limits.max_pixels)
              for i, s in enumerate(config.styles)]
    consistency = config.consistency if config.HasField("consistency") else True
    return ValidatedVideo(mode, styles, options, config.preset, config.model_name, strength, processing_size,
                          tile, overlap, consistency, alpha,
                          output_format(config.output_format, "config.output_format", "png"))


@dataclass
class VideoSession:
    """The hand-over between the RPC (event loop) and the worker thread of one stream.

    ``inbox`` is a thread-safe queue of encoded frames (and :data:`EOF`); the worker sends its responses
    through ``emit``. Neither needs a bound of its own: the RPC's slot budget bounds them both.
    """

    config: ValidatedVideo
    max_frame_bytes: int
    max_pixels: int
    inbox: queue.Queue[object] = field(default_factory=queue.Queue)
    frames: int = 0
    """Frames stylised (worker thread)."""
    buffered: int = 0
    """Frames received and not yet handed back to gRPC (event loop)."""
    max_buffered: int = 0


def frame_stylizer(worker: Worker, video: ValidatedVideo) -> Any:
    """The :class:`~styletx_core.video.FrameStylizer` of the stream's mode."""
    from styletx_core.video.frames import FastFrames, HybridFrames, OptimizeFrames, PresetFrames

    weights = list(video.options.style_blend_weights) if video.options.style_blend_weights else None
    if video.mode == pb.MODE_FAST:
        return FastFrames(worker.models.fast(worker.device), video.styles, weights, video.strength,
                          video.processing_size)
    if video.mode == pb.MODE_PRESET:
        return PresetFrames(worker.models.preset(worker.device), [video.preset], None, video.processing_size)
    if video.mode == pb.MODE_CYCLEGAN:
        return _CycleGANFrames(worker, video)
    if video.mode == pb.MODE_HYBRID:
        return HybridFrames(worker.engine, worker.models.fast(worker.device), video.styles, video.options,
                            alpha=video.alpha)
    return OptimizeFrames(worker.engine, video.styles, video.options)


class _CycleGANFrames:
    """Each frame through the generator (tiled beyond the tile size)."""

    def __init__(self, worker: Worker, video: ValidatedVideo) -> None:
        self._generator = worker.models.generators(worker.index, worker.device).get(video.model_name)
        self._tile, self._overlap = video.tile, video.overlap

    def __call__(self, frame: Image.Image, guide: Any) -> Image.Image:
        from styletx_core.cyclegan import run_tiled

        return run_tiled(self._generator, frame, self._tile, self._overlap)


def run_video(session: VideoSession, worker: Worker, cancel: Any, emit: Callable[[Message], None],
              job_id: str, queue_seconds: float) -> tuple[int, float]:
    """Worker thread: stylise frames from ``session.inbox`` until :data:`EOF`; returns (frames, seconds)."""
    from styletx_core.video import StreamStylizer

    video = session.config
    start = time.monotonic()
    stream = StreamStylizer(frame_stylizer(worker, video), _STREAM_MODE.get(video.mode, "fast"),
                            video.consistency, video.alpha)
    emit(pb.StylizeVideoResponse(job_id=job_id, started=pb.VideoStarted(device=worker.device,
                                                                        queue_seconds=queue_seconds)))
    while (item := session.inbox.get()) is not EOF:
        if cancel.is_set():
            raise Cancelled()
        assert isinstance(item, bytes)
        emit(pb.StylizeVideoResponse(job_id=job_id, frame=_stylize_frame(stream, session, item)))
        session.frames += 1
    if cancel.is_set():
        raise Cancelled()
    return session.frames, time.monotonic() - start


def _stylize_frame(stream: Any, session: VideoSession, data: bytes) -> pb.VideoFrame:
    index = session.frames
    image = load_image(data, max_pixels=session.max_pixels, field=f"frames[{index}].image")
    output = stream.process(np.asarray(image, dtype=np.uint8))
    fmt = session.config.output_format
    encoded = encode_image(Image.fromarray(output), fmt)
    if len(encoded) > session.max_frame_bytes:
        raise ServiceError.invalid(f"frames[{index}].image", f"stylised, it encodes to {len(encoded)} bytes in "
                                   f"{fmt}, over the {session.max_frame_bytes}-byte message budget; send "
                                   "smaller frames or ask for JPEG")
    return pb.VideoFrame(index=index, image=encoded, format=FORMAT_ENUMS[fmt], width=output.shape[1],
                         height=output.shape[0])
