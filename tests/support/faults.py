"""Faults injected through the engine factory, never through a switch in production code: an extra loss term
(the engine's ``extra_losses``) that fails at its n-th evaluation, inside the optimiser's step where a real
out-of-memory or NaN would occur, and a wrapper engine that hands one to each job that asks for one."""

from __future__ import annotations

import collections
import math
import threading
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from styletx_core.options import StylizeOptions
from styletx_core.progress import Callback, StylizeResult

__all__ = ["FaultLoss", "FaultyEngine"]


class FaultLoss(torch.nn.Module):
    """A loss term that is 0 until its ``at``-th evaluation, then fails: ``oom`` raises torch's out-of-memory
    error, ``nan`` makes the loss NaN (the engine's own check reports it), anything else raises RuntimeError."""

    def __init__(self, kind: str, at: int) -> None:
        super().__init__()
        self.kind, self.at, self.calls = kind, at, 0

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls < self.at:
            return image.sum() * 0
        if self.kind == "oom":
            raise torch.OutOfMemoryError("injected out-of-memory fault")
        if self.kind == "nan":
            return image.sum() * math.nan
        raise RuntimeError(f"injected fault {self.kind!r}")


class FaultyEngine:
    """The real engine; each ``stylize`` takes the next fault from ``faults`` (none when it is empty)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.faults: collections.deque[dict[str, Any]] = collections.deque()
        self._lock = threading.Lock()

    def stylize(self, content: Image.Image, styles: Sequence[Image.Image], opts: StylizeOptions,
                callback: Callback | None = None, init_image: Image.Image | None = None,
                controls: Sequence[Any] | None = None, content_strength: Image.Image | None = None) -> StylizeResult:
        with self._lock:
            fault = self.faults.popleft() if self.faults else None
        extra = {} if fault is None else {"fault": FaultLoss(fault["fault"], fault["fault_at"])}
        return self.engine.stylize(content, styles, opts, callback=callback, init_image=init_image,
                                   extra_losses=extra, controls=controls, content_strength=content_strength)

    def variations(self, *args: Any, **kwargs: Any) -> list[StylizeResult]:
        return self.engine.variations(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # target_cache_info, device, weights: the real engine's
        return getattr(self.engine, name)
