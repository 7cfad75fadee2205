"""What the scheduler moves around: a :class:`Job` (a leaf of the server package) and the one interface every
kind of work implements, :class:`Work`.

The queue and the servicer only ever call ``job.work.run(job, worker)`` and ``job.work.queued(...)``: an
image job (:class:`~styletx_server.image_job.ImageJob`) and a video stream
(:class:`~styletx_server.modes.video.VideoSession`) each know how to run themselves and how to tell their
caller its place in the queue, so nothing dispatches on the type of the work.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from google.protobuf.message import Message
from opentelemetry import context as otel_context

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["Job", "JobStats", "Work"]


@dataclass(frozen=True)
class JobStats:
    """What a finished job tells the metrics."""

    iterations: int
    run_seconds: float
    total_seconds: float


class Work(Protocol):
    """One kind of work on its way through the queue."""

    def run(self, job: Job, worker: Worker) -> JobStats | None:
        """Worker thread: do the work, sending everything through ``job.emit``; raises ``Cancelled`` once
        ``job.cancel`` is set. None: the work gave its worker up unfinished and will be queued again (a video
        session with no frame to stylise)."""
        ...

    def queued(self, job_id: str, position: int) -> Message:
        """The message telling the caller that ``position`` jobs wait ahead of it."""
        ...


@dataclass
class Job:
    """A piece of :class:`Work` with its channel back to the caller. ``emit`` must be callable from any
    thread."""

    work: Work
    emit: Callable[[Message], None]
    """Sends the work's messages (StylizeEvents, or StylizeVideoResponses) to the caller."""
    decode_seconds: float = 0.0
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    cancel: threading.Event = field(default_factory=threading.Event)
    received: float = field(default_factory=time.monotonic)
    """When the request arrived (before decoding)."""
    queued: float = field(default_factory=time.monotonic)
    batch_key: tuple[object, ...] | None = None
    """Jobs with equal keys may run in one batch (:func:`styletx_core.batch.batch_key`); None: always alone."""
    trace_context: otel_context.Context = field(default_factory=otel_context.get_current)
    """The submitting call's trace (its RPC span), which the job's spans continue in a worker thread."""

    def announce(self, position: int) -> None:
        """Tell the caller its place in the queue (in the message its kind of work speaks)."""
        self.emit(self.work.queued(self.id, position))
