"""What a job runs on: one worker's engine and device, and the server's shared mode networks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image

from styletx_core.options import StylizeOptions
from styletx_core.progress import Callback, StylizeResult
from styletx_core.regions import StyleControl

from .modes.models import ModeModels

__all__ = ["Engine", "Worker"]


class Engine(Protocol):
    """What the service needs of :class:`styletx_core.engine.StyleTransfer`."""

    def stylize(self, content: Image.Image, styles: Sequence[Image.Image], opts: StylizeOptions,
                callback: Callback | None = None, init_image: Image.Image | None = None, *,
                controls: Sequence[StyleControl | None] | None = None,
                content_strength: Image.Image | None = None) -> StylizeResult: ...

    def variations(self, content: Image.Image, styles: Sequence[Image.Image], count: int,
                   opts: StylizeOptions | None = None,
                   callback: Callback | None = None, *,
                   controls: Sequence[StyleControl | None] | None = None,
                   content_strength: Image.Image | None = None) -> list[StylizeResult]: ...


@dataclass
class Worker:
    """The worker's engine and device, and the server's shared mode networks (``index`` picks the worker's
    own CycleGAN registry)."""

    engine: Engine
    device: str
    models: ModeModels = field(default_factory=ModeModels)
    index: int = 0
