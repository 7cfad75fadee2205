"""A bounded FIFO of jobs with one worker per device, which runs compatible jobs together as a batch.

A worker takes the job at the head of the queue; if it is batchable (``Job.batch_key``), the worker also takes
the queued jobs with the same key, oldest first, up to ``max_batch``, waiting up to ``batch_wait`` seconds for
companions when it has fewer. The head job is always served, so a job is passed over only by jobs that run
together with an older one: every dispatch moves every waiting job forward, and no job waits indefinitely.

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
#: ``batch_runner(jobs, worker_index)`` runs several jobs together in a worker thread; per job, its error
#: (None: success).
BatchRunner = Callable[[list[Job], int], list[BaseException | None]]


class JobQueue:
    """FIFO of at most ``capacity`` waiting jobs, run by ``workers`` threads (one running job per device)."""

    def __init__(self, runner: Runner, on_done: DoneCallback, *, workers: int, capacity: int,
                 on_yield: YieldCallback | None = None, batch_runner: BatchRunner | None = None,
                 max_batch: int = 1, batch_wait: float = 0.0) -> None:
        self._runner = runner
        self._batch_runner = batch_runner
        self.max_batch = max_batch if batch_runner is not None else 1
        self.batch_wait = batch_wait
        self._on_done = on_done
        self._on_yield = on_yield
        self.workers = workers
        self.capacity = capacity
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: dict[int, list[Job]] = {}
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
        return sum(len(jobs) for jobs in self._running.values())

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
        for jobs in self._running.values():
            for job in jobs:
                job.cancel.set()

    async def join(self) -> None:
        """Wait for the workers to exit (after :meth:`close`, once the running jobs end)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._executor.shutdown(wait=False)

    async def _work(self, index: int) -> None:
        while (jobs := await self._next()) is not None:
            self._running[index] = jobs
            try:
                if len(jobs) == 1:
                    await self._run_one(jobs[0], index)
                else:
                    await self._run_batch(jobs, index)
            finally:
                del self._running[index]

    async def _run_one(self, job: Job, index: int) -> None:
        error: BaseException | None = None
        outcome: object = None
        started = time.monotonic()
        try:
            outcome = await asyncio.get_running_loop().run_in_executor(self._executor, self._runner, job, index)
        except BaseException as exc:  # reported to the job's caller, never lost
            error = exc
        if outcome is YIELDED and self._on_yield is not None:
            self._on_yield(job)
            return
        if error is None:
            self._learn_duration(time.monotonic() - started)
        self._on_done(job, error)
        if isinstance(error, asyncio.CancelledError):
            raise error

    async def _run_batch(self, jobs: list[Job], index: int) -> None:
        assert self._batch_runner is not None
        started = time.monotonic()
        try:
            errors = await asyncio.get_running_loop().run_in_executor(self._executor, self._batch_runner, jobs,
                                                                      index)
        except BaseException as exc:  # the batch itself failed (not one job): every job hears of it
            errors = [exc] * len(jobs)
        if not any(errors):
            self._learn_duration((time.monotonic() - started) / len(jobs))
        for job, error in zip(jobs, errors, strict=True):
            self._on_done(job, error)
        cancelled = next((e for e in errors if isinstance(e, asyncio.CancelledError)), None)
        if cancelled is not None:
            raise cancelled

    def _learn_duration(self, seconds: float) -> None:
        """Seconds of worker time per job (a batch's shared by its jobs), for the retry hint."""
        self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * seconds

    async def _next(self) -> list[Job] | None:
        """The head job and, if it is batchable, its compatible companions (FIFO among them)."""
        while not self._waiting:
            if self._closed:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        batch = [self._waiting.popleft()]
        if batch[0].batch_key is not None and self.max_batch > 1:
            await self._gather_companions(batch)
        self._announce_positions()
        return batch

    async def _gather_companions(self, batch: list[Job]) -> None:
        """Add queued jobs with the head's key, and those arriving within ``batch_wait``, up to ``max_batch``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_wait
        self._take_companions(batch)
        while len(batch) < self.max_batch and not self._closed and (left := deadline - loop.time()) > 0:
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), left)
            self._take_companions(batch)

    def _take_companions(self, batch: list[Job]) -> None:
        key = batch[0].batch_key
        for job in [j for j in self._waiting if j.batch_key == key][: self.max_batch - len(batch)]:
            self._waiting.remove(job)
            batch.append(job)

    def _announce_positions(self) -> None:
        for position, job in enumerate(self._waiting):
            with contextlib.suppress(Exception):
                job.announce(position)
