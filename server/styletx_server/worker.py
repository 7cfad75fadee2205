"""What a job runs on: one worker's engine and device, and the server's shared mode networks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image

from styletx_core.batch import BatchJob
from styletx_core.memory import ScalePlan
from styletx_core.options import StylizeOptions
from styletx_core.progress import Callback, StylizeResult

from .modes.models import ModeModels

__all__ = ["BatchEngine", "Engine", "Worker"]


class Engine(Protocol):
    """What the service needs of :class:`styletx_core.engine.StyleTransfer`."""

    def stylize(self, content: Image.Image, styles: Sequence[Image.Image], opts: StylizeOptions,
                callback: Callback | None = None, init_image: Image.Image | None = None) -> StylizeResult: ...

    def variations(self, content: Image.Image, styles: Sequence[Image.Image], count: int,
                   opts: StylizeOptions | None = None,
                   callback: Callback | None = None) -> list[StylizeResult]: ...


class BatchEngine(Engine, Protocol):
    """An engine that also optimises compatible jobs together (:mod:`styletx_core.batch`)."""

    def stylize_batch(self, jobs: Sequence[BatchJob]) -> list[StylizeResult | BaseException]: ...

    def memory_plan(self, sizes: Sequence[tuple[int, int]], opts: StylizeOptions,
                    batch: int = 1) -> list[ScalePlan]: ...


@dataclass
class Worker:
    """The worker's engine and device, and the server's shared mode networks (``index`` picks the worker's
    own CycleGAN registry)."""

    engine: Engine
    device: str
    models: ModeModels = field(default_factory=ModeModels)
    index: int = 0
