"""Remote video: frames through the ``StylizeVideo`` RPC, and a file-to-file helper for ``styletx video``.

The server reads a frame only when it has room for it, so the request iterator here is consumed at the
server's pace: decoding a long video never runs ahead of the server by more than gRPC's flow-control window.
Files are decoded and encoded with the ffmpeg that ``imageio-ffmpeg`` bundles (H.264, the source's frame
rate, its audio track copied); that package is only needed for files, not for frame streams.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from styletx_proto.v1 import styletx_pb2 as pb
from styletx_proto.v1 import styletx_pb2_grpc as pb_grpc

from ._errors import StyletxError, from_rpc_error
from ._request import FORMAT_NAMES, ImageInput, Styles, image_bytes, set_option, style_list

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["VideoDone", "VideoFrame", "VideoStream", "stylize_frames", "stylize_video_file", "video_requests"]

#: Frames larger than this go as JPEG: a frame message must stay under gRPC's default 4 MiB.
MAX_FRAME_BYTES = 4 * 1024 * 1024 - 64 * 1024


@dataclass(frozen=True)
class VideoFrame:
    """One stylised frame, in input order."""

    index: int
    image: bytes
    format: str
    width: int
    height: int

    def to_pil(self) -> Image.Image:
        from PIL import Image

        image = Image.open(io.BytesIO(self.image))
        image.load()
        return image


@dataclass(frozen=True)
class VideoDone:
    """The stream's end: frames stylised, time and the most frames the server held at once."""

    frames: int
    run_seconds: float
    frames_per_second: float
    queue_seconds: float
    max_buffered_frames: int


def video_config(styles: Styles, *, mode: str = "fast", consistency: bool | None = None,
                 alpha: float | None = None, **options: Any) -> pb.VideoConfig:
    """The stream's VideoConfig; ``options`` are the :class:`JobOptions` a VideoConfig has (``params`` fields
    for OPTIMIZE/HYBRID, ``strength``, ``processing_size``, ``tile``, ``overlap``, ``model_name``, ``preset``,
    ``output_format``)."""
    config = pb.VideoConfig(styles=style_list(styles), consistency=consistency, alpha=alpha)
    for name, value in {"mode": mode, **options}.items():
        set_option(config, name, value)
    return config


def video_requests(config: pb.VideoConfig, frames: Iterable[ImageInput]) -> Iterator[pb.StylizeVideoRequest]:
    """The config, then each frame as PNG (JPEG when PNG would not fit in one message)."""
    yield pb.StylizeVideoRequest(config=config)
    for index, frame in enumerate(frames):
        data = image_bytes(frame, f"frames[{index}]")
        if len(data) > MAX_FRAME_BYTES and not isinstance(frame, bytes | str | os.PathLike):
            buffer = io.BytesIO()
            frame.convert("RGB").save(buffer, "JPEG", quality=95)
            data = buffer.getvalue()
        yield pb.StylizeVideoRequest(frame=pb.VideoFrame(index=index, image=data))


class VideoStream:
    """Iterator of the stylised frames (:class:`VideoFrame`) of one stream; ``done`` is set at the end and
    ``cancel()`` stops the server's work within one frame."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self.job_id: str | None = None
        self.done: VideoDone | None = None
        self.queue_position: int | None = None

    def cancel(self) -> None:
        self._call.cancel()

    def __iter__(self) -> Iterator[VideoFrame]:
        try:
            for response in self._call:
                self.job_id = response.job_id
                frame = self._handle(response)
                if frame is not None:
                    yield frame
        except Exception as error:
            raise from_rpc_error(error) from None
        if self.done is None:
            raise StyletxError(grpc.StatusCode.DATA_LOSS, "the video stream ended before VideoCompleted")

    def _handle(self, response: pb.StylizeVideoResponse) -> VideoFrame | None:
        which = response.WhichOneof("event")
        if which == "frame":
            f = response.frame
            return VideoFrame(f.index, f.image, FORMAT_NAMES.get(f.format, "png"), f.width, f.height)
        if which in ("accepted", "queue_update"):
            self.queue_position = getattr(response, which).queue_position
        elif which == "completed":
            c = response.completed
            self.done = VideoDone(c.frames, c.run_seconds, c.frames_per_second, c.queue_seconds,
                                  c.max_buffered_frames)
        return None


def stylize_frames(client: Any, frames: Iterable[ImageInput], styles: Styles, *,
                   timeout: float | None = None, **options: Any) -> VideoStream:
    """Stylise ``frames`` (all one size) on a server; iterate the returned stream for them, in order.

    Args:
        client: a :class:`client.Client` (its channel, TLS and retry settings are used) or a ``grpc.Channel``.
        options: :func:`video_config`'s (``mode``, ``strength``, ``consistency``, ``alpha``, …).

    >>> with Client("localhost:50051") as c:                                # doctest: +SKIP
    ...     for frame in stylize_frames(c, frames, ["starry.jpg"], mode="fast"):
    ...         frame.to_pil().save(f"out_{frame.index:05d}.png")
    """
    channel = getattr(client, "_channel", client)
    config = video_config(styles, **options)
    call = pb_grpc.StyleTransferStub(channel).StylizeVideo(video_requests(config, frames),
                                                           timeout=timeout or getattr(client, "timeout", None))
    return VideoStream(call)


def _decode(source: Path, size: int | None) -> tuple[Iterator[Image.Image], dict[str, Any]]:
    """Frames of ``source`` as PIL images (resized to ``size`` long side, even sides) and ffmpeg's metadata."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise StyletxError(grpc.StatusCode.FAILED_PRECONDITION,
                           "video files need imageio-ffmpeg: pip install imageio-ffmpeg") from None
    from PIL import Image

    reader = imageio_ffmpeg.read_frames(str(source))
    meta: dict[str, Any] = next(reader)
    width, height = meta["size"]
    scale = 1.0 if size is None else size / max(width, height)
    target = (max(2, round(width * scale) // 2 * 2), max(2, round(height * scale) // 2 * 2))

    def frames() -> Iterator[Image.Image]:
        for raw in reader:
            image = Image.frombytes("RGB", (width, height), raw)
            yield image if image.size == target else image.resize(target, Image.Resampling.LANCZOS)

    meta["target"] = target
    return frames(), meta


def stylize_video_file(client: Any, source: str | os.PathLike[str], output: str | os.PathLike[str],
                       styles: Styles, *, size: int | None = None, timeout: float | None = None,
                       progress: Callable[[int, int], None] | None = None, **options: Any) -> VideoDone:
    """Decode ``source``, stylise it through the server and write H.264 to ``output`` with the source's frame
    rate and audio. ``progress(done, expected)`` is called per frame."""
    import imageio_ffmpeg

    frames, meta = _decode(Path(source), size)
    fps = float(meta.get("fps") or 25.0)
    expected = round(float(meta.get("duration") or 0) * fps)
    audio = {"audio_path": str(source), "audio_codec": "copy"} if meta.get("audio_codec") else {}
    writer = imageio_ffmpeg.write_frames(str(output), meta["target"], fps=fps, codec="libx264",
                                         macro_block_size=2, output_params=["-shortest"] if audio else None,
                                         **audio)
    writer.send(None)
    stream = stylize_frames(client, frames, styles, timeout=timeout, **options)
    try:
        for done, frame in enumerate(stream, 1):
            writer.send(frame.to_pil().convert("RGB").tobytes())
            if progress is not None:
                progress(done, max(expected, done))
    except BaseException:
        stream.cancel()
        raise
    finally:
        writer.close()
    assert stream.done is not None
    return stream.done
