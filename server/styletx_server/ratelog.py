"""Rate-limited logging of request errors, so that a client repeating a bad request cannot flood the log.

Each kind of message (the format string) gets ``burst`` lines per ``period`` seconds; what is dropped is
counted and reported in the next line that gets through (``… (37 similar lines suppressed)``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """A token bucket per message format in front of ``logger`` (thread safe)."""

    def __init__(self, logger: logging.Logger, *, burst: int = 5, period: float = 10.0) -> None:
        self._logger = logger
        self._burst = burst
        self._period = period
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float, int]] = {}  # format → (tokens, last refill, suppressed)

    def log(self, level: int, message: str, *args: Any, **kwargs: Any) -> bool:
        """Log one line unless this format's bucket is empty; returns whether it was logged."""
        suppressed = self._take(message)
        if suppressed is None:
            return False
        if suppressed:
            message += " (%d similar lines suppressed)"
            args = (*args, suppressed)
        self._logger.log(level, message, *args, **kwargs)
        return True

    def _take(self, key: str) -> int | None:
        """None when over the limit; else how many lines of this kind were dropped since the last one."""
        now = time.monotonic()
        with self._lock:
            tokens, last, suppressed = self._buckets.get(key, (float(self._burst), now, 0))
            tokens = min(float(self._burst), tokens + (now - last) * self._burst / self._period)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now, suppressed + 1)
                return None
            self._buckets[key] = (tokens - 1.0, now, 0)
            return suppressed
