"""A bounded FIFO of jobs with one worker per device.

All bookkeeping happens on the event loop; only the engine runs in the worker threads. A full queue refuses
at once with RESOURCE_EXHAUSTED and a retry hint (how long the jobs ahead should take), rather than letting
requests pile up in memory; a closed queue (shutting down) answers UNAVAILABLE so clients go elsewhere.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc

from .errors import ServiceError
from .job import Job

__all__ = ["YIELDED", "JobQueue"]

_LOGGER = logging.getLogger(__name__)

#: ``runner(job, worker_index)`` runs a job in a worker thread.
Runner = Callable[[Job, int], object]
#: ``on_done(job, error)`` runs on the loop when a job ends (``error`` None: success) or is failed by close().
DoneCallback = Callable[[Job, BaseException | None], None]
#: ``on_yield(job)`` runs on the loop when a job gave its worker up unfinished (a video session, see
#: :class:`~styletx_server.modes.video.VideoSession`); it puts the job back with :meth:`JobQueue.resubmit`.
YieldCallback = Callable[[Job], None]
#: What a runner returns for a job that gave its worker up without finishing.
YIELDED = object()


class JobQueue:
    """FIFO of at most ``capacity`` waiting jobs, run by ``workers`` threads (one running job per device)."""

    def __init__(self, runner: Runner, on_done: DoneCallback, *, workers: int, capacity: int,
                 on_yield: YieldCallback | None = None) -> None:
        self._runner = runner
        self._on_done = on_done
        self._on_yield = on_yield
        self.workers = workers
        self.capacity = capacity
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: dict[int, Job] = {}
        self._wakeup = asyncio.Event()
        self._closed = False
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="styletx-worker")
        self._tasks: list[asyncio.Task[None]] = []
        self._mean_seconds = 5.0  # a guess until the first job finishes; refined as jobs finish

    @property
    def depth(self) -> int:
        """Jobs waiting (not running)."""
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._running)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(i), name=f"styletx-worker-{i}")
                       for i in range(self.workers)]

    def submit(self, job: Job) -> int:
        """Enqueue ``job``; returns how many jobs wait ahead of it. ServiceError when full or closed."""
        self.check_capacity()
        self._waiting.append(job)
        self._wakeup.set()
        return len(self._waiting) - 1

    def resubmit(self, job: Job) -> None:
        """Put an admitted job that gave its worker up back at the end of the queue (no capacity check: it holds
        its admission already); a closed queue fails it with UNAVAILABLE instead."""
        if self._closed:
            self._on_done(job, ServiceError(grpc.StatusCode.UNAVAILABLE, "server is shutting down; retry on "
                                            "another replica", retry_after=0.0))
            return
        self._waiting.append(job)
        self._wakeup.set()

    def check_capacity(self) -> None:
        """Raise what :meth:`submit` would: UNAVAILABLE when closed, RESOURCE_EXHAUSTED when full."""
        if self._closed:
            raise ServiceError(grpc.StatusCode.UNAVAILABLE,
                               "server is shutting down; retry on another replica")
        if len(self._waiting) >= self.capacity:
            retry = self.retry_hint()
            raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"queue is full ({self.capacity} jobs waiting); retry in about {retry:.0f}s",
                               retry_after=retry)

    def retry_hint(self) -> float:
        """Seconds until a worker is likely free for one more job: the jobs ahead × the mean job time."""
        return self._mean_seconds * (len(self._waiting) + 1) / self.workers

    def withdraw(self, job: Job) -> bool:
        """Take a job that has not started out of the queue (its client went away)."""
        try:
            self._waiting.remove(job)
        except ValueError:
            return False
        self._announce_positions()
        return True

    def close(self) -> None:
        """Refuse new jobs and fail the waiting ones with UNAVAILABLE; running jobs go on."""
        self._closed = True
        error = ServiceError(grpc.StatusCode.UNAVAILABLE, "server is shutting down before the job started; "
                             "retry on another replica", retry_after=0.0)
        while self._waiting:
            self._on_done(self._waiting.popleft(), error)
        self._wakeup.set()

    def cancel_running(self) -> None:
        for job in self._running.values():
            job.cancel.set()

    async def join(self) -> None:
        """Wait for the workers to exit (after :meth:`close`, once the running jobs end)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._executor.shutdown(wait=False)

    async def _work(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        while (job := await self._next()) is not None:
            self._running[index] = job
            error: BaseException | None = None
            outcome: object = None
            started = time.monotonic()
            try:
                outcome = await loop.run_in_executor(self._executor, self._runner, job, index)
            except BaseException as exc:  # reported to the job's caller, never lost
                error = exc
            finally:
                del self._running[index]
            if outcome is YIELDED and self._on_yield is not None:
                self._on_yield(job)
                continue
            if error is None:
                self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * (time.monotonic() - started)
            self._on_done(job, error)
            if isinstance(error, asyncio.CancelledError):
                raise error

    async def _next(self) -> Job | None:
        while not self._waiting:
            if self._closed:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        job = self._waiting.popleft()
        self._announce_positions()
        return job

    def _announce_positions(self) -> None:
        for position, job in enumerate(self._waiting):
            with contextlib.suppress(Exception):
                job.announce(position)
