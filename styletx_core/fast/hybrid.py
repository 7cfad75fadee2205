"""HYBRID: the fast network's picture initialises the Gatys optimisation, which refines it.

The feed-forward result already has the style's palette and strokes, so the loop skips most of the coarse
scales that exist to establish large structures (``hybrid_options``: the last two scales, at most
:data:`HYBRID_COARSE_ITERATIONS` at the coarser one). Measured with the quality benchmark at 512 px
(bench/results/fast_hybrid.json): the final scale alone reaches the reference bar only at 0.75× OPTIMIZE's
full-resolution-equivalent iterations and loses it again (L-BFGS from the fast picture keeps its texture);
50 iterations at the coarser scale first reach it at 0.60×, 20 at 0.45× (old defaults). With the 2026-12-02
defaults: 20.0 against 57.0 equivalent iterations, 0.35× (``bench/results/rerun_quality_speed.md``). The engine's
contract takes ``init_image``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from PIL import Image

from styletx_core.options import StylizeOptions
from styletx_core.progress import Callback, StylizeResult

from ._stylizer import FastStylizer

__all__ = ["Refiner", "hybrid_init", "hybrid_options", "stylize_hybrid"]


class Refiner(Protocol):
    """What HYBRID needs of the engine: ``StyleTransfer.stylize`` with ``init_image``."""

    def stylize(self, content: Image.Image, styles: Sequence[Image.Image], opts: StylizeOptions,
                callback: Callback | None = None, init_image: Image.Image | None = None) -> StylizeResult: ...


def hybrid_init(fast: FastStylizer, content: Image.Image, styles: Sequence[Image.Image],
                opts: StylizeOptions) -> Image.Image:
    """The fast result at the optimisation's output size, with the same blend and colour preservation."""
    weights = list(opts.style_blend_weights) if opts.style_blend_weights is not None else None
    return fast.stylize(content, styles, weights=weights, preserve_color=opts.preserve_color,
                        size=opts.size)


#: Scales HYBRID runs before the final one, and its iterations there at most (see the module docstring).
HYBRID_COARSE_SCALES = 1
HYBRID_COARSE_ITERATIONS = 20


def hybrid_options(opts: StylizeOptions, coarse_scales: int = HYBRID_COARSE_SCALES) -> StylizeOptions:
    """``opts`` with the scale schedule cut to the last ``coarse_scales + 1`` scales."""
    scales = opts.scales()
    start = scales[max(0, len(scales) - 1 - coarse_scales)]
    return opts.replace(min_size=start, coarse_iterations=min(opts.coarse_iterations, HYBRID_COARSE_ITERATIONS))


def stylize_hybrid(engine: Refiner, fast: FastStylizer, content: Image.Image, styles: Sequence[Image.Image],
                   opts: StylizeOptions, callback: Callback | None = None,
                   coarse_scales: int = HYBRID_COARSE_SCALES) -> StylizeResult:
    """Fast pass, then ``engine.stylize(..., init_image=fast result)`` on :func:`hybrid_options`."""
    init = hybrid_init(fast, content, styles, opts)
    return engine.stylize(content, styles, hybrid_options(opts, coarse_scales), callback=callback,
                          init_image=init)

