"""What admitted work may cost: a per-request budget of decoded pixels and a server-wide memory budget.

The red team's 1.4 MiB request (content + 8 flat 7000×7000 PNGs) decoded to 1.3 GB and took 14 s before it
was accepted, and a few such requests queued took the server past its machine's memory. Now:

* :func:`header_pixels` reads each image's size from its header (nothing decoded) so a request over
  ``Limits.max_request_pixels`` is refused in milliseconds, naming the field;
* :class:`MemoryBudget` reserves what a request will hold (:func:`footprint`) before it is decoded, for as long
  as the job lives (queued, running, or kept for a retry), and refuses with RESOURCE_EXHAUSTED and a retry hint
  when the admitted work would pass ``Limits.admission_memory_bytes``;
* queued image jobs keep their *encoded* request and decode it again when they start
  (:class:`~styletx_server.image_job.ImageJob`), so a full queue holds bytes, not pixels.

The engine's own working memory (activations) is bounded separately, by its memory plan, for the one job per
worker that runs.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from PIL import Image

from .errors import ServiceError

__all__ = ["BYTES_PER_PIXEL", "MemoryBudget", "Reservation", "footprint", "header_pixels"]

#: Host memory per decoded input pixel while a job holds it: the RGB image (3 B) and the engine's float32
#: tensor of it (12 B).
BYTES_PER_PIXEL = 15


def header_pixels(images: Iterable[tuple[str, bytes]], limit: int, prefix: str = "") -> int:
    """Pixels of ``(field, encoded)`` images together, from their headers; INVALID_ARGUMENT over ``limit``.

    Unreadable headers count 0 here: decoding reports them by name afterwards.
    """
    total = 0
    for field, data in images:
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
        except Exception:
            continue
        total += width * height
        if total > limit:
            raise ServiceError.invalid(prefix + field, f"the request's images decode to more than {limit} pixels "
                                       f"together (this one brings the total to {total}); this server's "
                                       "per-request budget is Limits.max_request_pixels")
    return total


def footprint(pixels: int, encoded_bytes: int) -> int:
    """What an admitted request holds at most: its encoded bytes and its decoded images."""
    return encoded_bytes + pixels * BYTES_PER_PIXEL


@dataclass
class Reservation:
    """Bytes held in a :class:`MemoryBudget` until :meth:`release` (idempotent, thread safe)."""

    budget: MemoryBudget
    size: int
    released: bool = False
    deferred: bool = False
    """Released by a running thread's end (:meth:`release_when_done`), not by whoever refused the request."""

    def release(self) -> None:
        self.budget._give_back(self)

    def release_when_done(self, future: asyncio.Future[Any]) -> None:
        """Keep holding the bytes until ``future`` (a decode that cannot be stopped) ends."""
        self.deferred = True
        future.add_done_callback(lambda _: self.release())

    def resize(self, size: int) -> None:
        """Hold ``size`` bytes instead (e.g. a finished job's result instead of its inputs); never refused."""
        self.budget._resize(self, size)


class MemoryBudget:
    """A server-wide count of the memory admitted work may hold."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._lock = threading.Lock()

    def reserve(self, size: int, retry_after: float) -> Reservation:
        """Hold ``size`` bytes, or RESOURCE_EXHAUSTED (with ``retry_after`` seconds as the hint)."""
        with self._lock:
            if self.used + size > self.capacity:
                mib = 1024 * 1024
                raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"this request needs about {size // mib} MiB and the server's admitted work "
                                   f"holds {self.used // mib} of its {self.capacity // mib} MiB budget; retry "
                                   f"in about {retry_after:.0f}s", retry_after=retry_after)
            self.used += size
        return Reservation(self, size)

    def _give_back(self, reservation: Reservation) -> None:
        with self._lock:
            if not reservation.released:
                reservation.released = True
                self.used -= reservation.size

    def _resize(self, reservation: Reservation, size: int) -> None:
        with self._lock:
            if not reservation.released:
                self.used += size - reservation.size
            reservation.size = size
