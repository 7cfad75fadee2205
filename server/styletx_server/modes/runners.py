"""How each mode makes its image on a worker: :data:`MODE_RUNNERS`, one :class:`ModeRunner` per proto Mode.

OPTIMIZE is the engine's loop; FAST and PRESET one forward pass of Magenta's networks (reported as one step, so
they stream the same events); HYBRID the FAST picture refined by the loop at the final scale; CYCLEGAN a
generator run tiled with overlap (one step per tile). Each runner reports through the engine's callback, so
cancellation and progress work the same for every mode.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image
from styletx_proto.v1 import styletx_pb2 as pb

from styletx_core.geometry import fit_long_side
from styletx_core.options import StylizeOptions
from styletx_core.progress import Callback, Iterate, StylizeResult
from styletx_core.regions import regional_composite
from styletx_core.schedule import total_iterations

from ..validation import ValidatedRequest
from ..worker import Worker

__all__ = ["MODE_RUNNERS", "ModeRunner"]


@dataclass(frozen=True)
class ModeRunner:
    """``run(worker, request, callback)`` makes the image; ``schedule(request)`` is what Started announces
    (the scale long sides and the total steps: iterations, or tiles for CYCLEGAN)."""

    run: Callable[[Worker, ValidatedRequest, Callback], StylizeResult]
    schedule: Callable[[Worker, ValidatedRequest], tuple[list[int], int]]


def _optimize(worker: Worker, request: ValidatedRequest, callback: Callback) -> StylizeResult:
    engine = worker.engine
    controls, strength = request.controls, request.content_strength
    if request.variation:  # variations(count=1) with seed s is variation k of seed s - k: see the proto
        return engine.variations(request.content, request.styles, 1, request.options, callback,
                                 controls=controls, content_strength=strength)[0]
    return engine.stylize(request.content, request.styles, request.options, callback=callback,
                          controls=controls, content_strength=strength)


def _optimize_schedule(worker: Worker, request: ValidatedRequest) -> tuple[list[int], int]:
    return _iterations(request.options)


def _iterations(options: StylizeOptions) -> tuple[list[int], int]:
    return options.scales(), total_iterations(options)


def _one_pass(worker: Worker, request: ValidatedRequest) -> tuple[list[int], int]:
    return [request.options.size], 1


def _blend(request: ValidatedRequest) -> list[float] | None:
    weights = request.options.style_blend_weights
    return list(weights) if weights is not None else None


def _fast_image(worker: Worker, request: ValidatedRequest) -> Image.Image:
    """FAST's picture: the blended style embedding moved toward the content's by ``strength``; with masks, each
    masked style's picture in its region (feathered edges) over the unmasked styles' picture (or the content)."""
    opts = request.options
    fast = worker.models.fast(worker.device)

    def picture(styles: list[Image.Image], weights: list[float] | None) -> Image.Image:
        return fast.stylize(request.content, styles, weights=weights, strength=request.strength,
                            preserve_color=opts.preserve_color, size=opts.size,
                            processing_size=request.processing_size)

    masks = {i: control.mask for i, control in enumerate(request.controls) if control and control.mask}
    if not masks:
        return picture(request.styles, _blend(request))
    return regional_composite(request.content, request.styles, masks, picture, _blend(request))


def _fast(worker: Worker, request: ValidatedRequest, callback: Callback) -> StylizeResult:
    return _single_pass(request, callback, lambda: _fast_image(worker, request))


def _preset(worker: Worker, request: ValidatedRequest, callback: Callback) -> StylizeResult:
    return _single_pass(request, callback, lambda: _preset_image(worker, request))


def _preset_image(worker: Worker, request: ValidatedRequest) -> Image.Image:
    """PRESET's picture: the request's preset; with region presets, each one's picture in its mask (feathered
    edges) over the request's preset, which paints the pixels no region covers."""
    opts = request.options
    stylizer = worker.models.preset(worker.device)

    def picture(presets: list[str], weights: list[float] | None) -> Image.Image:
        return stylizer.stylize(request.content, presets[0], strength=request.strength,
                                preserve_color=opts.preserve_color, size=opts.size,
                                processing_size=request.processing_size)

    if not request.region_presets:
        return picture([request.preset], None)
    masks = {i: control.mask for i, control in enumerate(request.controls) if control and control.mask}
    return regional_composite(request.content, [*request.region_presets, request.preset], masks, picture)


def _single_pass(request: ValidatedRequest, callback: Callback, make: Callable[[], Image.Image]) -> StylizeResult:
    """One forward pass reported as one step, so feed-forward jobs stream the same events as OPTIMIZE."""
    start = time.perf_counter()
    image = make()
    elapsed = time.perf_counter() - start
    callback(Iterate(iteration=1, total_iterations=1, scale_index=0, scale_count=1, width=image.width,
                     height=image.height, loss=0.0, losses={}, elapsed=elapsed, eta=0.0, peak_memory_bytes=0,
                     preview=(lambda: image) if request.options.preview_every else None))
    return StylizeResult(image=image, seed=request.options.seed or 0, iterations=0, equivalent_iterations=0.0,
                         elapsed=elapsed)


def _hybrid_options(request: ValidatedRequest) -> StylizeOptions:
    from styletx_core.fast import hybrid_options

    return hybrid_options(request.options)


def _hybrid(worker: Worker, request: ValidatedRequest, callback: Callback) -> StylizeResult:
    """The FAST picture at the output size starts the optimisation, which refines it at the final scale."""
    init = _fast_image(worker, request)
    return worker.engine.stylize(request.content, request.styles, _hybrid_options(request), callback=callback,
                                 init_image=init, controls=request.controls,
                                 content_strength=request.content_strength)


def _hybrid_schedule(worker: Worker, request: ValidatedRequest) -> tuple[list[int], int]:
    return _iterations(_hybrid_options(request))


def _cyclegan(worker: Worker, request: ValidatedRequest, callback: Callback) -> StylizeResult:
    """The generator on the content at the output size, tiled with overlap beyond ``request.tile``."""
    from styletx_core.cyclegan import run_tiled
    from styletx_core.imageio import resize_long_side

    generator = worker.models.generators(worker.index, worker.device).get(request.model_name)
    content = request.content
    if max(content.size) != request.options.size:
        content = resize_long_side(content, request.options.size)
    start = time.perf_counter()

    def on_tile(done: int, total: int) -> None:
        elapsed = time.perf_counter() - start
        callback(Iterate(iteration=done, total_iterations=total, scale_index=0, scale_count=1,
                         width=content.width, height=content.height, loss=0.0, losses={}, elapsed=elapsed,
                         eta=elapsed / done * (total - done), peak_memory_bytes=0))

    image = run_tiled(generator, content, request.tile, request.overlap, callback=on_tile)
    return StylizeResult(image=image, seed=request.options.seed or 0, iterations=0, equivalent_iterations=0.0,
                         elapsed=time.perf_counter() - start)


def _cyclegan_schedule(worker: Worker, request: ValidatedRequest) -> tuple[list[int], int]:
    from styletx_core.cyclegan import tile_count

    width, height = fit_long_side(request.content.size, request.options.size)  # as resize_long_side in _cyclegan
    return [request.options.size], tile_count(width, height, request.tile, request.overlap)


#: How each mode runs. Modes missing here answer UNIMPLEMENTED.
MODE_RUNNERS: dict[int, ModeRunner] = {
    pb.MODE_OPTIMIZE: ModeRunner(_optimize, _optimize_schedule),
    pb.MODE_FAST: ModeRunner(_fast, _one_pass),
    pb.MODE_PRESET: ModeRunner(_preset, _one_pass),
    pb.MODE_HYBRID: ModeRunner(_hybrid, _hybrid_schedule),
    pb.MODE_CYCLEGAN: ModeRunner(_cyclegan, _cyclegan_schedule),
}
