"""A stand-in engine for the service tests (and the subprocess server), and the in-process test server.

It has :class:`styletx_core.engine.StyleTransfer`'s ``stylize``/``variations`` signatures, reports every step
through the callback, honours ``Cancelled`` (raised by the callback) and returns a deterministic image, so the
service can be tested in milliseconds per iteration. The real engine is tested through the service too
(tests/test_server.py::test_real_engine_job).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from PIL import Image, ImageChops

from styletx_core.errors import Cancelled
from styletx_core.imageio import resize_long_side
from styletx_core.options import StylizeOptions
from styletx_core.progress import Callback, Iterate, StylizeResult
from styletx_core.schedule import scale_iterations, total_iterations

T = TypeVar("T")


class FakeEngine:
    """Sleeps ``step_seconds`` per iteration; the result is the content resized to ``opts.size``, inverted."""

    def __init__(self, device: str = "cpu", step_seconds: float | None = None) -> None:
        self.device = device
        self.step_seconds = (
            float(os.environ.get("STYLETX_FAKE_STEP", "0.01")) if step_seconds is None else step_seconds
        )
        self.started = threading.Event()
        self.runs = 0
        self.cancelled = 0
        self._cache: set[int] = set()
        self.hits = self.misses = 0
        self.last_regions: tuple[tuple[Any, ...], Image.Image | None] = ((), None)

    @staticmethod
    def expected(content: Image.Image, opts: StylizeOptions) -> Image.Image:
        return ImageChops.invert(resize_long_side(content.convert("RGB"), opts.size))

    def stylize(
        self,
        content: Image.Image,
        styles: Sequence[Image.Image],
        opts: StylizeOptions | None = None,
        callback: Callback | None = None,
        init_image: Image.Image | None = None,
        controls: Sequence[Any] | None = None,
        content_strength: Image.Image | None = None,
    ) -> StylizeResult:
        opts = opts or StylizeOptions()
        self.runs += 1
        self.last_regions = (tuple(controls or ()), content_strength)  # what the service passed on
        self.started.set()
        self._touch_cache(styles)
        result = self.expected(content, opts)
        scales = opts.scales()
        total = total_iterations(opts)
        start = time.perf_counter()
        done = 0
        for index, side in enumerate(scales):
            for _ in range(scale_iterations(opts)[index]):
                time.sleep(self.step_seconds)
                done += 1
                if callback is not None:
                    self._report(callback, opts, done, total, index, len(scales), side, result, start)
        return StylizeResult(
            image=result,
            seed=opts.seed or 0,
            iterations=done,
            equivalent_iterations=float(done),
            elapsed=time.perf_counter() - start,
            losses={"content": 1.0, "style": 2.0, "tv": 0.5},
        )

    def _report(
        self,
        callback: Callback,
        opts: StylizeOptions,
        done: int,
        total: int,
        index: int,
        count: int,
        side: int,
        image: Image.Image,
        start: float,
    ) -> None:
        preview = (
            (lambda: resize_long_side(image, side))
            if opts.preview_every and done % opts.preview_every == 0
            else None
        )
        elapsed = time.perf_counter() - start
        try:
            callback(
                Iterate(
                    iteration=done,
                    total_iterations=total,
                    scale_index=index,
                    scale_count=count,
                    width=side,
                    height=side,
                    loss=3.5 / done,
                    losses={"content": 1.0, "style": 2.0},
                    elapsed=elapsed,
                    eta=elapsed / done * (total - done),
                    peak_memory_bytes=1 << 20,
                    preview=preview,
                )
            )
        except Cancelled:
            self.cancelled += 1
            raise

    def variations(
        self,
        content: Image.Image,
        styles: Sequence[Image.Image],
        count: int,
        opts: StylizeOptions | None = None,
        callback: Callback | None = None,
        controls: Sequence[Any] | None = None,
        content_strength: Image.Image | None = None,
    ) -> list[StylizeResult]:
        opts = opts or StylizeOptions()
        base = opts.seed or 0
        return [self.stylize(content, styles, opts.replace(seed=base + k), callback, controls=controls,
                             content_strength=content_strength) for k in range(count)]

    def _touch_cache(self, styles: Sequence[Image.Image]) -> None:
        for style in styles:
            key = hash(style.tobytes())
            if key in self._cache:
                self.hits += 1
            else:
                self._cache.add(key)
                self.misses += 1

    def target_cache_info(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses}


def make_engine(device: str) -> FakeEngine:
    """``--engine-factory support.fake:make_engine`` for a subprocess server."""
    return FakeEngine(device)


class ServerThread:
    """A :class:`styletx_server.app.StyletxServer` on 127.0.0.1 with an ephemeral port and its loop in a thread of
    its own, so that tests drive it with the ordinary (sync) gRPC client."""

    def __init__(self, factory: Callable[[str], Any], **config: Any) -> None:
        from styletx_server.app import StyletxServer
        from styletx_server.config import ServerConfig

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="test-server-loop")
        self._thread.start()
        settings: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "metrics_port": 0, "devices": "cpu"}
        settings["grace"] = 0.0
        settings.update(config)
        cfg = ServerConfig(**settings)

        async def make() -> StyletxServer:
            return StyletxServer(cfg, factory)

        self.server: StyletxServer = self.call(make())
        self.port: int = self.call(self.server.start())
        self.target = f"127.0.0.1:{self.port}"

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        async def stop() -> None:
            await self.server.stop(grace=0)

        self.call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
