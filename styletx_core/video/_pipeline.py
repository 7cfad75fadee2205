"""``stylize_video``: decode → stylise each frame (with the previous output as a guide) → encode + audio."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from styletx_core.errors import ImageError, OptionError

from ..geometry import fit_long_side
from ._flow import FLOW_METHODS, FlowEstimator, warp
from ._io import FrameWriter, VideoInfo, even_size, mux_audio, probe, read_frames
from ._temporal import TemporalGuide, blend_previous, restore_detail
from ._workdir import WorkDir

__all__ = ["MODES", "FrameStylizer", "ProgressFn", "StreamStylizer", "VideoReport", "stylize_video"]

_LOGGER = logging.getLogger(__name__)

MODES = ("fast", "optimize", "hybrid")
#: Output containers that hold H.264 (and copied audio) well.
CONTAINERS = (".mp4", ".mkv", ".mov")
#: Below this fraction of reliable pixels the previous output is not used at all (a scene cut).
MIN_COVERAGE = 0.3
ProgressFn = Callable[[int, int], None]
"""``progress(frames_done, frames_expected)``; may raise :class:`~styletx_core.errors.Cancelled`."""


class FrameStylizer(Protocol):
    """Turns one frame into its stylised version, optionally guided by the warped previous output.

    ``fingerprint`` (optional attribute) names the style and settings, so that a resumed job refuses frames
    made with different ones.
    """

    def __call__(self, frame: Image.Image, guide: TemporalGuide | None) -> Image.Image: ...


@dataclass(frozen=True)
class VideoReport:
    """What was written."""

    frames: int
    fps: float
    size: tuple[int, int]
    elapsed: float
    resumed_from: int
    """Frames taken from the work directory of an earlier, interrupted run."""
    audio: bool


@dataclass
class _Settings:
    mode: str
    consistency: bool
    alpha: float
    size: tuple[int, int]
    flow: str
    max_frames: int | None
    restore_detail: bool = True


def stylize_video(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    stylize_frame: FrameStylizer,
    mode: str = "fast",
    consistency: bool = True,
    progress: ProgressFn | None = None,
    resume: bool = False,
    *,
    size: int | None = None,
    alpha: float = 0.6,
    flow: str = "dis",
    max_frames: int | None = None,
    restore_detail: bool = True,
    work_dir: str | os.PathLike[str] | None = None,
    keep_work_dir: bool = False,
) -> VideoReport:
    """Stylise ``source`` into ``output`` (H.264, the source's frame rate, its audio copied).

    Args:
        stylize_frame: see :class:`FrameStylizer` and :mod:`styletx_core.video.frames` for ready ones.
        mode: ``"fast"`` blends the warped previous output into each new one (``alpha``); ``"optimize"`` and
            ``"hybrid"`` hand the guide to ``stylize_frame``, which starts from it and adds a temporal loss.
        consistency: compute optical flow and guide each frame by the previous output; off = per frame.
        resume: keep finished frames in ``work_dir`` (default ``.<output name>.styletx-work`` beside it) and
            continue from the last one when run again with the same source and settings.
        size: output long side (default: the source's); sides are rounded down to even for H.264.
        alpha: FAST's blend weight of the previous output on reliable pixels (0–0.95).
        restore_detail: FAST: give the blend's fine detail back the contrast of the network's own output
            (:func:`~styletx_core.video.restore_detail`), so that blending does not weaken the style.
        max_frames: stop after this many frames (previews, tests).
    """
    settings = _check(mode, consistency, alpha, flow, max_frames, restore_detail)
    if Path(output).suffix.lower() not in CONTAINERS:
        raise OptionError("output", f"must end in one of {', '.join(CONTAINERS)}, got {os.fspath(output)!r}")
    info = probe(source)
    settings.size = even_size(_fit(info.size, size))
    work = _open_workdir(source, output, stylize_frame, settings, work_dir) if resume else None
    output = Path(output)
    staging = output.with_name(f".{output.stem}.video{output.suffix}")
    start = time.perf_counter()
    resumed = work.frames_done if work else 0
    total = min(info.frame_estimate, max_frames or info.frame_estimate)
    try:
        count = _run_frames(source, stylize_frame, settings, info, work, staging, total, progress)
        if work is not None:
            _encode(work, count, staging, settings.size, info.fps)
        if info.audio_codec:
            mux_audio(staging, source, output, count / info.fps)
        else:
            os.replace(staging, output)
    finally:
        staging.unlink(missing_ok=True)  # only left over when something failed
    if work is not None and not keep_work_dir:
        work.remove()
    return VideoReport(count, info.fps, settings.size, time.perf_counter() - start, resumed,
                       info.audio_codec is not None)


def _check(mode: str, consistency: bool, alpha: float, flow: str, max_frames: int | None,
           restore_detail: bool = True) -> _Settings:
    if mode not in MODES:
        raise OptionError("mode", f"must be one of {', '.join(MODES)}; got {mode!r}")
    if not 0.0 <= alpha <= 0.95:
        raise OptionError("alpha", f"must be between 0 and 0.95, got {alpha!r}")
    if flow not in FLOW_METHODS:
        raise OptionError("flow", f"must be one of {', '.join(FLOW_METHODS)}; got {flow!r}")
    if max_frames is not None and max_frames < 1:
        raise OptionError("max_frames", f"must be at least 1, got {max_frames!r}")
    return _Settings(mode, bool(consistency), float(alpha), (0, 0), flow, max_frames, bool(restore_detail))


def _fit(size: tuple[int, int], long_side: int | None) -> tuple[int, int]:
    """The frame size for ``--size`` (each side ≥ 2 px: the codecs' chroma subsampling needs pairs)."""
    if long_side is not None and not 16 <= long_side <= 8192:
        raise OptionError("size", f"must be between 16 and 8192, got {long_side!r}")
    width, height = fit_long_side(size, long_side)
    return max(2, width), max(2, height)


def _open_workdir(source: Any, output: Any, stylize_frame: FrameStylizer, settings: _Settings,
                  work_dir: Any) -> WorkDir:
    stat = Path(source).stat()
    job = {"source": os.path.abspath(source), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
           "settings": {**settings.__dict__, "size": list(settings.size)},
           "stylizer": str(getattr(stylize_frame, "fingerprint", type(stylize_frame).__qualname__))}
    output = Path(output)
    path = Path(work_dir) if work_dir is not None else output.with_name(f".{output.name}.styletx-work")
    return WorkDir(path, job)


class StreamStylizer:
    """Stylises a stream of equally sized frames in order, carrying the temporal state between calls.

    This is the whole per-frame algorithm without files: :func:`stylize_video` feeds it decoded frames, and a
    streaming RPC can feed it frames as they arrive (one instance per stream; not thread-safe).
    """

    def __init__(self, stylize_frame: FrameStylizer, mode: str = "fast", consistency: bool = True,
                 alpha: float = 0.6, flow: str = "dis", restore_detail: bool = True) -> None:
        self._settings = _check(mode, consistency, alpha, flow, None, restore_detail)
        self._stylize_frame = stylize_frame
        self._estimator = FlowEstimator(flow) if consistency else None
        self._previous: tuple[np.ndarray, np.ndarray] | None = None  # (input frame, output as float 0–1)
        self.frames_done = 0

    def prime(self, frame: np.ndarray, output: np.ndarray) -> None:
        """Continue after ``frame`` whose stylised version was ``output`` (both H×W×3 uint8): resuming."""
        self._previous = (frame, output.astype(np.float32) / 255)
        self.frames_done += 1

    def process(self, frame: np.ndarray) -> np.ndarray:
        """The stylised version (H×W×3 uint8, same size) of the next ``frame`` (H×W×3 uint8 RGB)."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ImageError(f"frames must be H×W×3 uint8 RGB, got {frame.shape} {frame.dtype}", "frame")
        if self._previous is not None and self._previous[0].shape != frame.shape:
            raise ImageError(f"frame {self.frames_done} is {frame.shape[1]}×{frame.shape[0]}, the stream's "
                             f"frames are {self._previous[0].shape[1]}×{self._previous[0].shape[0]}", "frame")
        guide = _guide(frame, self.frames_done, self._previous, self._estimator)
        size = (frame.shape[1], frame.shape[0])
        image = self._stylize_frame(Image.fromarray(frame), guide)
        if image.size != size:
            image = image.resize(size, Image.Resampling.LANCZOS)
        result = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
        if self._settings.mode == "fast" and guide is not None:
            blended = blend_previous(result, guide, self._settings.alpha)
            result = restore_detail(blended, result) if self._settings.restore_detail else blended
        output = np.clip(result * 255 + 0.5, 0, 255).astype(np.uint8)
        # Keep the rounded output: a resumed run reads it back from PNG and must continue identically.
        self._previous = (frame, output.astype(np.float32) / 255)
        self.frames_done += 1
        return output


def _run_frames(source: Any, stylize_frame: FrameStylizer, settings: _Settings, info: VideoInfo,
                work: WorkDir | None, staging: Path, total: int, progress: ProgressFn | None) -> int:
    """Stylise every frame into ``work`` (resumable) or straight into the encoder; returns the frame count."""
    stream = StreamStylizer(stylize_frame, settings.mode, settings.consistency, settings.alpha, settings.flow,
                            settings.restore_detail)
    writer = None if work is not None else FrameWriter(staging, settings.size, info.fps)
    done = work.frames_done if work is not None else 0
    count = 0
    try:
        for index, frame in enumerate(read_frames(source, settings.size)):
            if settings.max_frames is not None and index >= settings.max_frames:
                break
            count = index + 1
            if work is not None and index < done:
                if index == done - 1:
                    stream.prime(frame, work.read(index))
                continue
            result = stream.process(frame)
            if work is not None:
                work.write(index, result)
            elif writer is not None:
                writer.write(result)
            if progress is not None:
                progress(index + 1, max(total, index + 1))
    finally:
        if writer is not None:
            writer.close()
    if count == 0:
        raise ImageError(f"{source} has no frames", "video")
    return count


def _guide(frame: np.ndarray, index: int, previous: tuple[np.ndarray, np.ndarray] | None,
           estimator: FlowEstimator | None) -> TemporalGuide | None:
    """The previous output warped into this frame, or ``None`` (first frame, consistency off, scene cut)."""
    if estimator is None or previous is None:
        return None
    pair = estimator.pair(previous[0], frame)
    if pair.coverage < MIN_COVERAGE:
        _LOGGER.info("frame %d: %.0f%% reliable flow, treated as a scene cut", index, 100 * pair.coverage)
        return None
    return TemporalGuide(index, np.clip(warp(previous[1], pair.backward, "cubic"), 0, 1), pair.mask)


def _encode(work: WorkDir, count: int, staging: Path, size: tuple[int, int], fps: float) -> None:
    with FrameWriter(staging, size, fps) as writer:
        for index in range(count):
            writer.write(work.read(index))
