"""How many job calls (Stylize, StylizeVideo) one client connection may run at once; more wait their turn.

This used to be HTTP/2's ``max_concurrent_streams``, which also counted the cheap calls (GetServerInfo,
health) and, under load, refused some of them outright: the server still counts a stream for a moment after
the client saw it end, so a client reusing that slot at once got ``RST_STREAM(REFUSED_STREAM)`` → UNAVAILABLE.
Counting job calls in the servicer instead lets cheap calls through and makes extra job calls wait, as the
flag's help says. HTTP/2's own limit stays, far higher, as a backstop (:func:`transport_streams`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

__all__ = ["PeerGate", "transport_streams"]


def transport_streams(calls_per_connection: int) -> int:
    """HTTP/2 streams per connection: far above the job-call limit, so that no call within it is refused."""
    return max(256, 8 * calls_per_connection)


@dataclass
class _Entry:
    slots: asyncio.Semaphore
    users: int = 0


@dataclass
class PeerGate:
    """At most ``limit`` concurrent holders per peer (``context.peer()``: one client connection)."""

    limit: int
    _peers: dict[str, _Entry] = field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def slot(self, peer: str) -> AsyncIterator[None]:
        """Wait for a free slot of ``peer``; entries vanish with their last user (no per-peer leak)."""
        entry = self._peers.setdefault(peer, _Entry(asyncio.Semaphore(self.limit)))
        entry.users += 1
        try:
            async with entry.slots:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._peers[peer]
