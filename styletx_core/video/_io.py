"""Video decode/encode through the ffmpeg binary that ``imageio-ffmpeg`` bundles.

OpenCV's writer cannot produce H.264 here; the bundled ffmpeg can, and it also copies the audio track, which
a per-frame pipeline would otherwise lose.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import subprocess
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from styletx_core.errors import ImageError

__all__ = ["FrameWriter", "VideoInfo", "even_size", "mux_audio", "probe", "read_frames"]

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoInfo:
    """What the encoder needs to reproduce the source's timing, and whether there is audio to carry over."""

    fps: float
    size: tuple[int, int]
    """Width, height of the decoded frames."""
    duration: float
    audio_codec: str | None

    @property
    def frame_estimate(self) -> int:
        """``fps × duration``: a progress total, not a count (variable frame rates exist)."""
        return max(1, round(self.fps * self.duration))


def _frames_generator(path: str | os.PathLike[str]) -> Generator[Any, Any, None]:
    import imageio_ffmpeg

    if not Path(path).is_file():
        raise ImageError(f"no such video file: {path}", "video")
    return imageio_ffmpeg.read_frames(os.fspath(path), pix_fmt="rgb24")


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Frame rate, size, duration and audio codec of ``path``; :class:`ImageError` when it is not a video."""
    generator = _frames_generator(path)
    try:
        meta = next(generator)
    except (OSError, RuntimeError, StopIteration) as exc:
        raise ImageError(f"cannot read {path} as a video ({exc})", "video") from None
    finally:
        generator.close()
    return _info(meta)


def _info(meta: dict[str, Any]) -> VideoInfo:
    fps = float(meta.get("fps") or 0.0)
    if not math.isfinite(fps) or fps <= 0:
        fps = 25.0
    return VideoInfo(fps=fps, size=tuple(meta["size"]), duration=float(meta.get("duration") or 0.0),
                     audio_codec=meta.get("audio_codec"))


def read_frames(path: str | os.PathLike[str], size: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """Decoded H×W×3 uint8 RGB frames, resized to ``size`` (width, height) with area averaging if given."""
    generator = _frames_generator(path)
    try:
        meta = next(generator)
    except (OSError, RuntimeError, StopIteration) as exc:
        generator.close()
        raise ImageError(f"cannot read {path} as a video ({exc})", "video") from None
    width, height = meta["size"]
    try:
        for raw in generator:
            frame: np.ndarray = np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)
            if size is not None and size != (width, height):
                frame = np.asarray(cv2.resize(frame, size, interpolation=cv2.INTER_AREA))
            yield frame
    finally:
        generator.close()


def even_size(size: tuple[int, int]) -> tuple[int, int]:
    """H.264 in 4:2:0 needs even sides: round each down to even (at least 2)."""
    return max(2, size[0] - size[0] % 2), max(2, size[1] - size[1] % 2)


class FrameWriter(contextlib.AbstractContextManager["FrameWriter"]):
    """H.264 (libx264, CRF 18, yuv420p) writer of RGB frames at a given frame rate."""

    def __init__(
        self, path: str | os.PathLike[str], size: tuple[int, int], fps: float, crf: int = 18
    ) -> None:
        import imageio_ffmpeg

        if size != even_size(size):
            raise ImageError(f"H.264 needs even frame sides, got {size[0]}×{size[1]}", "video")
        self.size = size
        self.frames = 0
        self._writer = imageio_ffmpeg.write_frames(
            os.fspath(path), size, fps=fps, codec="libx264", quality=None, macro_block_size=1,
            pix_fmt_out="yuv420p", output_params=["-crf", str(crf), "-preset", "medium"],
        )
        self._writer.send(None)

    def write(self, frame: np.ndarray) -> None:
        """Append one H×W×3 uint8 frame of the writer's size."""
        if frame.shape != (self.size[1], self.size[0], 3) or frame.dtype != np.uint8:
            expected = f"{self.size[1]}×{self.size[0]}×3 uint8"
            raise ValueError(f"frame must be {expected}, got {frame.shape} {frame.dtype}")
        self._writer.send(np.ascontiguousarray(frame))
        self.frames += 1

    def close(self) -> None:
        self._writer.close()

    def __exit__(self, *exc: object) -> None:
        self.close()


def mux_audio(video: Path, source: str | os.PathLike[str], output: Path, duration: float) -> None:
    """``output`` = ``video``'s stream + ``source``'s first audio track, copied (re-encoded to AAC if the
    container refuses the codec), cut at ``duration`` seconds. Replaces ``output``; ``video`` is consumed.

    ``-t`` rather than ``-shortest``: with stream copy, ``-shortest`` can drop the last video frames when the
    audio ends a little early.
    """
    import imageio_ffmpeg

    base = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", os.fspath(video),
            "-i", os.fspath(source), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
            "-t", f"{duration:.6f}"]
    for audio in (["-c:a", "copy"], ["-c:a", "aac"]):
        command = [*base, *audio, os.fspath(output)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode == 0:
            video.unlink(missing_ok=True)
            return
        _LOGGER.info("audio %s failed: %s", audio[1], result.stderr.strip()[-300:])
    _LOGGER.warning("could not carry the audio track of %s over; writing video only", source)
    os.replace(video, output)
