"""Idempotency keys (``StylizeRequest.request_id``): a retry attaches to its job instead of starting it again.

The payment and inference APIs' pattern: the client names each logical request; the server remembers, per
caller, the job a key started. A call with a known key and the same request *attaches*: it is replayed the
job's events from the start (:class:`JobLog`) and then follows it live, so a caller whose connection broke
after ``Accepted`` (or whose result was half sent) gets its result without the job running twice. A
finished job's events are kept for ``Limits.result_ttl`` seconds, counted in the admission memory budget
(evicted oldest first when new work needs the room). The same key with a different request is refused.

A keyed job whose callers are all gone keeps running for ``Limits.detach_grace`` seconds, waiting for a retry;
then it is cancelled like any abandoned job. The memory is per replica: a retry that reaches another replica
runs the job there (docs/deploy.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from styletx_proto.v1 import styletx_pb2 as pb

from .admission import Reservation
from .errors import ServiceError
from .job import Job

__all__ = ["CANCEL_METADATA", "MAX_KEY_CHARS", "JobLog", "Record", "Records", "caller_of", "check_key", "fingerprint"]

MAX_KEY_CHARS = 128
#: Call metadata that turns a Stylize call with a request_id into "cancel that job" (the SDK's ``cancel()``).
CANCEL_METADATA = "styletx-cancel"


def check_key(key: str) -> None:
    """At most 128 printable ASCII characters, else INVALID_ARGUMENT naming ``request_id``."""
    if len(key) > MAX_KEY_CHARS or not all("!" <= c <= "~" for c in key):
        raise ServiceError.invalid("request_id", f"must be at most {MAX_KEY_CHARS} printable ASCII characters "
                                   "without spaces (a UUID, say)")


def caller_of(metadata: Any) -> str:
    """Whose key it is: a digest of the bearer token when the call carries one, else "" (any caller).

    Without tokens a key is shared by whoever knows it: the reconnecting client has a new address, so the
    address cannot identify it.
    """
    for key, value in metadata or ():
        if key == "authorization":
            return hashlib.sha256(str(value).encode()).hexdigest()[:32]
    return ""


def fingerprint(request: pb.StylizeRequest) -> bytes:
    """What makes two requests "the same": every field but the key, serialised deterministically."""
    copy = pb.StylizeRequest()
    copy.CopyFrom(request)
    copy.request_id = ""
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).digest()


class JobLog:
    """Every event of a job, in order, for any number of followers (the first caller and the retries).

    ``emit`` is thread safe (the worker calls it); ``close`` runs on the loop after the last event.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.events: list[Any] = []
        self.bytes = 0
        self.closed = False
        self.error: ServiceError | None = None
        self._changed = asyncio.Event()

    def emit(self, event: Any) -> None:
        self._loop.call_soon_threadsafe(self._append, event)

    def _append(self, event: Any) -> None:
        self.events.append(event)
        self.bytes += event.ByteSize()
        self._changed.set()

    def close(self, error: ServiceError | None) -> None:
        """Loop thread; the worker's events were scheduled before this call, so none is lost."""
        if not self.closed:
            self.closed, self.error = True, error
            self._changed.set()

    async def __aiter__(self) -> AsyncIterator[Any]:
        index = 0
        while True:
            while index < len(self.events):
                yield self.events[index]
                index += 1
            if self.closed:
                break
            self._changed.clear()  # no await since the check above: no event can slip in between
            await self._changed.wait()
        if self.error is not None:
            raise self.error


@dataclass
class Record:
    """One key's job."""

    fingerprint: bytes
    job: Job | None
    """None once the job ended: the record keeps its events, not its request."""
    log: JobLog
    reservation: Reservation | None
    job_id: str = ""
    followers: int = 0
    detached: float = 0.0
    expires: float | None = None
    """Set when the job ends: when its outcome is forgotten."""

    def __post_init__(self) -> None:
        if self.job is not None:
            self.job_id = self.job.id


@dataclass
class Records:
    """``(caller, key) → Record``, with expiry and eviction."""

    ttl: float
    _records: dict[tuple[str, str], Record] = field(default_factory=dict)
    _by_job: dict[str, tuple[str, str]] = field(default_factory=dict)

    def find(self, key: tuple[str, str], request_fingerprint: bytes) -> Record | None:
        """The live record of ``key``; FAILED_PRECONDITION when it was used for a different request."""
        self.sweep()
        record = self._records.get(key)
        if record is not None and record.fingerprint != request_fingerprint:
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"request_id {key[1]!r} was used for a different request (job {record.job_id}); "
                               "use a new request_id for a new request", field="request_id")
        return record

    def get(self, key: tuple[str, str]) -> Record | None:
        return self._records.get(key)

    def add(self, key: tuple[str, str], record: Record) -> None:
        self._records[key] = record
        self._by_job[record.job_id] = key

    def of_job(self, job_id: str) -> Record | None:
        """The record of this job (not another job's that took the key over: two first calls racing)."""
        key = self._by_job.get(job_id)
        record = None if key is None else self._records.get(key)
        return record if record is not None and record.job_id == job_id else None

    def finish(self, job_id: str) -> bool:
        """The job ended: keep its events for ``ttl`` seconds, holding their size in the budget."""
        record = self.of_job(job_id)
        if record is None:
            return False
        record.expires = time.monotonic() + self.ttl
        record.job = None  # its encoded request goes; the events stay
        if record.reservation is not None:
            record.reservation.resize(record.log.bytes)
        if self.ttl <= 0:
            self._drop(self._by_job[job_id])
        return True

    def sweep(self) -> None:
        now = time.monotonic()
        for key in [k for k, r in self._records.items() if r.expires is not None and r.expires <= now]:
            self._drop(key)

    def evict_oldest(self) -> bool:
        """Forget the finished record that expires first (to make room); False when none is finished."""
        finished = [(r.expires, k) for k, r in self._records.items() if r.expires is not None]
        if not finished:
            return False
        self._drop(min(finished)[1])
        return True

    def forget(self, job_id: str) -> None:
        """A job whose outcome is not worth keeping (withdrawn, cancelled): a retry runs it anew."""
        if self.of_job(job_id) is not None:
            self._drop(self._by_job[job_id])
        self._by_job.pop(job_id, None)

    def _drop(self, key: tuple[str, str]) -> None:
        record = self._records.pop(key, None)
        if record is not None:
            self._by_job.pop(record.job_id, None)
            if record.reservation is not None:
                record.reservation.release()

    def __len__(self) -> int:
        return len(self._records)
