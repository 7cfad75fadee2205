"""Typed events of a Stylize stream, the stream iterators (with ``.cancel()``) and the assembled result."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from styletx_proto.v1 import styletx_pb2 as pb

from ._errors import StyletxError, from_rpc_error
from ._request import FORMAT_NAMES
from .imagefile import save_encoded

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "Accepted", "AsyncEventStream", "Completed", "Event", "EventStream", "Preview", "Progress", "Quality",
    "QueueUpdate", "ResultAssembler", "ResultChunk", "Resumption", "Started", "StylizeOutput", "collect",
    "from_proto",
]



@dataclass(frozen=True)
class Accepted:
    """The server admitted the job; ``queue_position`` jobs wait ahead of it."""

    job_id: str
    queue_position: int
    queue_capacity: int


@dataclass(frozen=True)
class QueueUpdate:
    """The job moved up the queue: ``queue_position`` jobs still wait ahead of it."""

    job_id: str
    queue_position: int


@dataclass(frozen=True)
class Started:
    """A worker on ``device`` picked the job up: ``total_iterations`` over the long sides ``scales``; ``seed``
    repeats the result; ``queue_seconds`` were spent waiting."""

    job_id: str
    device: str
    seed: int
    scales: tuple[int, ...]
    total_iterations: int
    queue_seconds: float


@dataclass(frozen=True)
class Progress:
    """One optimisation step: ``iteration`` of ``total_iterations`` (1-based, over all scales), the working
    size at scale ``scale_index`` of ``scale_count``, the total and per-term ``losses``, seconds ``elapsed``
    and ``eta``, peak device memory."""

    job_id: str
    iteration: int
    total_iterations: int
    scale_index: int
    scale_count: int
    width: int
    height: int
    loss: float
    losses: dict[str, float]
    elapsed: float
    eta: float
    peak_memory_bytes: int


@dataclass(frozen=True)
class Preview:
    """The current image at ``iteration`` (every ``preview_every`` iterations), encoded as ``format``."""

    job_id: str
    iteration: int
    image: bytes
    format: str
    width: int
    height: int

    def to_pil(self) -> Image.Image:
        from PIL import Image

        return Image.open(io.BytesIO(self.image))


@dataclass(frozen=True)
class ResultChunk:
    """A piece of the encoded result (``data`` at ``offset`` of ``total_size`` bytes); the stream's
    :class:`StylizeOutput` assembles and checks them."""

    job_id: str
    data: bytes
    offset: int
    total_size: int
    format: str
    width: int
    height: int


@dataclass(frozen=True)
class Quality:
    """How close the result is to its style and content (ONNX VGG features on the server; lower is closer).

    ``style_distance`` is per layer (relu1_1 … relu5_1): the relative Gram-matrix distance to the blended
    style; ``content_distance`` the relative relu4_2 distance to the content; the colour distances are
    Wasserstein-2 distances of Lab colour statistics (≈ ΔE) to the style's and to the content's colours.
    """

    style_distance: dict[str, float]
    style_distance_mean: float
    content_distance: float
    color_distance: float
    color_distance_content: float
    scorer: str

    @classmethod
    def from_proto(cls, quality: pb.Quality) -> Quality:
        layers = dict(sorted(quality.style_distance.items()))  # a proto map has no order; relu1_1 … relu5_1
        return cls(layers, quality.style_distance_mean, quality.content_distance,
                   quality.color_distance, quality.color_distance_content, quality.scorer)

    def summary(self) -> str:
        """One line for humans: ``style 0.41 (relu1_1 0.2, …) content 0.63 colour 12.1 ΔE``."""
        layers = ", ".join(f"{name} {value:.3g}" for name, value in self.style_distance.items())
        return (f"style {self.style_distance_mean:.3g} ({layers})  content {self.content_distance:.3g}  "
                f"colour {self.color_distance:.3g} ΔE (to content {self.color_distance_content:.3g})")


@dataclass(frozen=True)
class Completed:
    """The job finished (always the last event): where the time went (``timings``), the final losses and rates
    (``metrics``), the ``seed`` and ``iterations`` used, the result's SHA-256 and its quality scores."""

    job_id: str
    timings: dict[str, float]
    metrics: dict[str, float]
    seed: int
    iterations: int
    result_sha256: str
    quality: Quality | None = None
    """None when the server could not score the result (``quality_unavailable`` says why)."""
    quality_unavailable: str = ""


Event = Accepted | QueueUpdate | Started | Progress | Preview | ResultChunk | Completed


def from_proto(event: pb.StylizeEvent) -> Event:
    """The typed twin of a proto event (unknown kinds from a newer server raise, naming the kind)."""
    which = event.WhichOneof("event")
    job = event.job_id
    if which == "accepted":
        a = event.accepted
        return Accepted(job, a.queue_position, a.queue_capacity)
    if which == "queue_update":
        return QueueUpdate(job, event.queue_update.queue_position)
    if which == "started":
        s = event.started
        return Started(job, s.device, s.seed, tuple(s.scales), s.total_iterations, s.queue_seconds)
    if which == "progress":
        p = event.progress
        return Progress(job, p.iteration, p.total_iterations, p.scale_index, p.scale_count, p.width, p.height,
                        p.loss, dict(p.losses), p.elapsed_seconds, p.eta_seconds, p.peak_memory_bytes)
    if which == "preview":
        v = event.preview
        return Preview(job, v.iteration, v.image, FORMAT_NAMES.get(v.format, "png"), v.width, v.height)
    if which == "result_chunk":
        r = event.result_chunk
        return ResultChunk(job, r.data, r.offset, r.total_size, FORMAT_NAMES.get(r.format, "png"), r.width,
                           r.height)
    if which == "completed":
        c = event.completed
        timings = {f.name: getattr(c.timings, f.name) for f in c.timings.DESCRIPTOR.fields}
        quality = Quality.from_proto(c.quality) if c.HasField("quality") else None
        return Completed(job, timings, dict(c.metrics), c.seed, c.iterations, c.result_sha256, quality,
                         c.quality_unavailable)
    raise StyletxError(grpc.StatusCode.UNKNOWN, f"unknown event kind {which!r} (newer server?)")


@dataclass
class StylizeOutput:
    """The result of a job: the image (``.image``, a PIL image decoded on first use; ``.data``, the encoded
    bytes as the server sent them, in ``format``) plus what it cost. ``save(path)`` encodes by extension."""

    data: bytes
    format: str
    width: int
    height: int
    seed: int
    metrics: dict[str, float]
    timings: dict[str, float]
    job_id: str
    iterations: int = 0
    history: list[Progress] = field(default_factory=list, repr=False)
    """Every Progress event, for loss curves."""
    quality: Quality | None = None
    """The server's quality scores of the image (None: see ``quality_unavailable``)."""
    quality_unavailable: str = ""

    @functools.cached_property
    def image(self) -> Image.Image:
        """The result as a PIL image (decoded from ``data`` once, on first use)."""
        from PIL import Image

        image = Image.open(io.BytesIO(self.data))
        image.load()
        return image

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the image in the format of ``path``'s extension (.png, .jpg, .webp, .tif): the received bytes
        as they are when the format matches (a 16-bit TIFF stays 16-bit), else re-encoded. Missing folders are
        created; an unknown extension raises StyletxError (INVALID_ARGUMENT)."""
        return save_encoded(self.data, self.format, path)


class ResultAssembler:
    """Collects chunks (checked by offset and SHA-256) and progress into a :class:`StylizeOutput`."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._chunk: ResultChunk | None = None
        self.history: list[Progress] = []

    def add(self, event: Event) -> StylizeOutput | None:
        """Feed each event; returns the output on Completed."""
        if isinstance(event, Progress):
            self.history.append(event)
        elif isinstance(event, ResultChunk):
            if event.offset != len(self._buffer):
                raise StyletxError(grpc.StatusCode.DATA_LOSS,
                                   f"chunk at {event.offset}, expected {len(self._buffer)}")
            self._buffer += event.data
            self._chunk = event
        elif isinstance(event, Completed):
            return self._finish(event)
        return None

    def _finish(self, done: Completed) -> StylizeOutput:
        chunk = self._chunk
        data = bytes(self._buffer)
        intact = chunk is not None and len(data) == chunk.total_size and \
            hashlib.sha256(data).hexdigest() == done.result_sha256
        if chunk is None or not intact:
            raise StyletxError(grpc.StatusCode.DATA_LOSS, "the result arrived incomplete or corrupted")
        return StylizeOutput(data, chunk.format, chunk.width, chunk.height, done.seed, done.metrics,
                             done.timings, done.job_id, done.iterations, self.history, done.quality,
                             done.quality_unavailable)


def collect(events: Iterable[Event], on_event: Callable[[Event], None] | None = None) -> StylizeOutput:
    assembler = ResultAssembler()
    for event in events:
        if on_event is not None:
            on_event(event)
        output = assembler.add(event)
        if output is not None:
            return output
    raise StyletxError(grpc.StatusCode.DATA_LOSS, "the stream ended before Completed")


#: Most times a stream is re-opened after a broken connection (each attaches to the same job by request_id).
RESUME_ATTEMPTS = 5


class Resumption:
    """How a stream with a ``request_id`` continues after UNAVAILABLE (a dropped connection, a broken stream).

    ``reopen()`` sends the same request again: the server attaches it to the running or finished job and
    replays its events from the start. :meth:`fresh` drops what this stream already delivered — a second
    Accepted or Started, result chunks before the bytes already received — so the result arrives exactly once;
    progress, previews and queue updates may repeat.
    """

    def __init__(self, reopen: Callable[[], Any], deadline: float, attempts: int = RESUME_ATTEMPTS,
                 cancel_job: Callable[[], None] | None = None) -> None:
        self._reopen = reopen
        self.cancel_job = cancel_job
        """Tells the server to stop the job: it keeps a keyed job whose stream broke running for a retry, and
        cannot tell a cancelled call from a broken one."""
        self._deadline = deadline
        self._attempts = attempts
        self.resumed = 0
        self._seen: set[str] = set()
        self._result_bytes = 0

    def backoff(self, error: BaseException) -> float | None:
        """Seconds to wait before re-opening after ``error``; None when it is not worth retrying (then the
        caller raises): not UNAVAILABLE, out of attempts, or past the deadline."""
        code = error.code() if isinstance(error, grpc.RpcError) else None
        if code != grpc.StatusCode.UNAVAILABLE or self.resumed >= self._attempts:
            return None
        wait = min(4.0, 0.25 * 2 ** self.resumed)
        if time.monotonic() + wait >= self._deadline:
            return None
        self.resumed += 1
        return wait

    def reopen(self, error: BaseException) -> Any | None:
        """A new call after ``error`` (sync streams: sleeps the backoff), or None."""
        wait = self.backoff(error)
        if wait is None:
            return None
        time.sleep(wait)
        return self._reopen()

    async def areopen(self, error: BaseException) -> Any | None:
        """:meth:`reopen` for asyncio streams."""
        wait = self.backoff(error)
        if wait is None:
            return None
        await asyncio.sleep(wait)
        return self._reopen()

    def fresh(self, proto: pb.StylizeEvent) -> bool:
        """Whether ``proto`` is news to this stream's reader."""
        kind = proto.WhichOneof("event")
        if kind in ("accepted", "started", "completed"):
            if kind in self._seen:
                return False
            self._seen.add(kind)
        elif kind == "result_chunk":
            chunk = proto.result_chunk
            if chunk.offset < self._result_bytes:
                return False
            self._result_bytes = chunk.offset + len(chunk.data)
        return True


class EventStream:
    """Iterator of typed events of one job. ``cancel()`` stops the job on the server within one iteration.

    Wraps a gRPC response iterator, or any iterator of proto events with a ``cancel()`` (the local backend).
    With ``resume`` (requests with a ``request_id``), a stream broken by the network is re-opened and picks
    up where it was (:class:`Resumption`).
    """

    def __init__(self, call: Any, resume: Resumption | None = None, target: str | None = None) -> None:
        self._call = call
        self._resume = resume
        self._cancelled = False
        self._target = target
        self.job_id: str | None = None

    def cancel(self) -> None:
        """Stop the job; an iteration in progress ends cleanly after the current event."""
        self._cancelled = True
        self._call.cancel()
        if self._resume is not None and self._resume.cancel_job is not None:
            self._resume.cancel_job()

    def __iter__(self) -> Iterator[Event]:
        while True:
            try:
                for proto in self._call:
                    if self._resume is not None and not self._resume.fresh(proto):
                        continue
                    event = from_proto(proto)
                    self.job_id = event.job_id
                    yield event
                    if self._cancelled:
                        return
                return
            except Exception as error:
                if self._cancelled:  # cancel() inside the loop: the iteration ends, no CANCELLED error
                    return
                # Only a stream that reached its job resumes; a server never reached is reported at once (the
                # channel's retry policy has already retried the connection).
                call = None if self._resume is None or self.job_id is None else self._resume.reopen(error)
                if call is None:
                    raise from_rpc_error(error, self._target) from None
                self._call = call

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class AsyncEventStream:
    """The asyncio twin of :class:`EventStream` (``async for``), resumed the same way."""

    def __init__(self, call: Any, resume: Resumption | None = None, target: str | None = None) -> None:
        self._call = call
        self._resume = resume
        self._cancelled = False
        self._target = target
        self.job_id: str | None = None

    def cancel(self) -> None:
        """Stop the job; an iteration in progress ends cleanly after the current event."""
        self._cancelled = True
        self._call.cancel()
        if self._resume is not None and self._resume.cancel_job is not None:
            self._resume.cancel_job()

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            try:
                async for proto in self._call:
                    if self._resume is not None and not self._resume.fresh(proto):
                        continue
                    event = from_proto(proto)
                    self.job_id = event.job_id
                    yield event
                    if self._cancelled:
                        return
                return
            except Exception as error:
                if self._cancelled:
                    return
                call = None if self._resume is None or self.job_id is None else await self._resume.areopen(error)
                if call is None:
                    raise from_rpc_error(error, self._target) from None
                self._call = call
