"""Ready-made frame stylisers for :func:`~styletx_core.video.stylize_video`, one per mode.

- :class:`FastFrames` — the feed-forward network; consistency is the pipeline's post-blend.
- :class:`PresetFrames` — the same with one of the 26 built-in styles (mode ``"fast"``).
- :class:`OptimizeFrames` — the Gatys loop; from the second frame on it starts from the warped previous
  output, runs fewer iterations at the final scale only, and adds the temporal loss (Ruder et al. 2016).
- :class:`HybridFrames` — the fast result (blended with the warped previous output) refined by the loop.
- :class:`CycleGANFrames` — a CycleGAN generator, tiled beyond the tile size.

:func:`frame_stylizer` picks one by mode name; the CLI (local networks) and the server (its workers' shared
networks) both build theirs through it, handing over the networks as :class:`Networks`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from styletx_core.errors import OptionError
from styletx_core.fast import FastStylizer, PresetStylizer, preset_index
from styletx_core.options import StylizeOptions
from styletx_core.regions import StyleControl

from ._temporal import TemporalGuide, TemporalLoss, blend_previous, guided_init

__all__ = ["FRAME_MODES", "CycleGANFrames", "FastFrames", "HybridFrames", "Networks", "OptimizeFrames",
           "PresetFrames", "frame_stylizer", "pipeline_mode"]

#: The modes :func:`frame_stylizer` knows (the CLI's ``--mode`` and the proto's video modes).
FRAME_MODES = ("fast", "preset", "cyclegan", "optimize", "hybrid")


def _style_digest(styles: Sequence[Image.Image]) -> str:
    digest = hashlib.blake2b(digest_size=8)
    for style in styles:
        digest.update(style.tobytes())
        digest.update(str(style.size).encode())
    return digest.hexdigest()


class FastFrames:
    """Per-frame :meth:`FastStylizer.render` with one embedding for the whole clip.

    The embedding is mixed once: with ``strength < 1`` the content side of the interpolation is the *first*
    frame's embedding, because re-embedding every frame would make the style itself flicker.
    """

    def __init__(self, stylizer: FastStylizer, styles: Sequence[Image.Image],
                 weights: Sequence[float] | None = None, strength: float = 1.0,
                 processing_size: int | None = None) -> None:
        self.stylizer = stylizer
        self.styles = list(styles)
        self.weights = None if weights is None else list(weights)
        self.strength = strength
        self.processing_size = processing_size
        self._embedding: np.ndarray | None = None
        stylizer.mix_embedding(self.styles, self.weights)  # validate now, before any frame is decoded
        self.fingerprint = (f"fast:{_style_digest(self.styles)}:{self.weights}:{strength}:{processing_size}")

    def __call__(self, frame: Image.Image, guide: TemporalGuide | None) -> Image.Image:
        if self._embedding is None:
            self._embedding = self.stylizer.mix_embedding(self.styles, self.weights, self.strength, frame)
        return self.stylizer.render(frame, self._embedding, processing_size=self.processing_size)


class PresetFrames:
    """Per-frame :meth:`PresetStylizer.stylize` (one of the 26 built-in styles, or a blend of them)."""

    def __init__(self, stylizer: PresetStylizer, presets: Sequence[str],
                 weights: Sequence[float] | None = None, processing_size: int | None = None) -> None:
        self.stylizer = stylizer
        self.presets = list(presets)
        self.weights = None if weights is None else list(weights)
        self.processing_size = processing_size
        for name in self.presets:
            preset_index(name)  # validate now, before any frame is decoded
        self.fingerprint = f"preset:{self.presets}:{self.weights}:{processing_size}"

    def __call__(self, frame: Image.Image, guide: TemporalGuide | None) -> Image.Image:
        return self.stylizer.stylize(frame, self.presets, self.weights, processing_size=self.processing_size)


class OptimizeFrames:
    """Per-frame :meth:`StyleTransfer.stylize`, guided from the second frame on.

    Args:
        engine: a :class:`~styletx_core.engine.StyleTransfer` (or anything with its ``stylize``).
        opts: options of the first frame; ``size`` is replaced by the frame's long side.
        later_iterations: iterations of every later frame, at the final scale only (Ruder et al. also
            spend far fewer on frames initialised from their predecessor).
        temporal_weight: weight of :class:`TemporalLoss`, relative to the engine's loss terms.
    """

    def __init__(self, engine: Any, styles: Sequence[Image.Image], opts: StylizeOptions | None = None,
                 later_iterations: int | None = None, temporal_weight: float = 20.0,
                 controls: Sequence[StyleControl | None] = ()) -> None:
        self.engine = engine
        self.styles = list(styles)
        # Fixed per-style masks and layers, resized to every frame by the engine (``regions``).
        self.regional: dict[str, Any] = {"controls": list(controls)} if any(controls) else {}
        self.opts = opts or StylizeOptions()
        self.later_iterations = later_iterations or max(1, self.opts.iterations // 2)
        self.temporal_weight = temporal_weight
        masks = [control.mask for control in controls if control and control.mask]
        self.fingerprint = (f"optimize:{_style_digest(self.styles)}:{self.opts.public_dict()}:"
                            f"{self.later_iterations}:{temporal_weight}:{_style_digest(masks)}:"
                            f"{[(c.layers, c.layer_weights) if c else None for c in controls]}")

    def __call__(self, frame: Image.Image, guide: TemporalGuide | None) -> Image.Image:
        opts = self.opts.replace(size=max(frame.size))
        if guide is None:
            return self.engine.stylize(frame, self.styles, opts, **self.regional).image
        init = guided_init(np.asarray(frame, dtype=np.float32) / 255, guide)
        return self._refine(frame, guide, init, opts)

    def _refine(self, frame: Image.Image, guide: TemporalGuide, init: np.ndarray,
                opts: StylizeOptions) -> Image.Image:
        """A final-scale-only run from ``init`` held to the warped previous output by the temporal loss."""
        later = opts.replace(iterations=self.later_iterations, min_size=opts.size)
        temporal = {"temporal": TemporalLoss.from_guide(guide, self.temporal_weight)}
        init_image = Image.fromarray(np.clip(init * 255 + 0.5, 0, 255).astype(np.uint8))
        result = self.engine.stylize(frame, self.styles, later, init_image=init_image, extra_losses=temporal,
                                     **self.regional)
        return result.image


class HybridFrames(OptimizeFrames):
    """The fast result starts every frame (blended with the warped previous output from the second frame on);
    the optimisation then refines it, at the final scale only."""

    def __init__(self, engine: Any, fast: FastStylizer, styles: Sequence[Image.Image],
                 opts: StylizeOptions | None = None, later_iterations: int | None = None,
                 temporal_weight: float = 20.0, alpha: float = 0.6,
                 controls: Sequence[StyleControl | None] = ()) -> None:
        super().__init__(engine, styles, opts, later_iterations, temporal_weight, controls)
        self.fast = FastFrames(fast, styles, self.opts.style_blend_weights)
        self.alpha = alpha
        self.fingerprint = f"hybrid:{self.fingerprint}:{alpha}"

    def __call__(self, frame: Image.Image, guide: TemporalGuide | None) -> Image.Image:
        opts = self.opts.replace(size=max(frame.size))
        start = np.asarray(self.fast(frame, None), dtype=np.float32) / 255
        if guide is None:
            first = opts.replace(min_size=opts.size)
            init_image = Image.fromarray(np.clip(start * 255 + 0.5, 0, 255).astype(np.uint8))
            return self.engine.stylize(frame, self.styles, first, init_image=init_image, **self.regional).image
        return self._refine(frame, guide, blend_previous(start, guide, self.alpha), opts)


class CycleGANFrames:
    """Each frame through a CycleGAN generator (tiled with overlap beyond ``tile``); no temporal guidance of
    its own: consistency is the pipeline's post-blend, as for the other feed-forward modes."""

    def __init__(self, generator: Any, tile: int = 512, overlap: int = 64) -> None:
        self.generator = generator
        self.tile, self.overlap = tile, overlap
        self.fingerprint = f"cyclegan:{id(generator)}:{tile}:{overlap}"

    def __call__(self, frame: Image.Image, guide: TemporalGuide | None) -> Image.Image:
        from styletx_core.cyclegan import run_tiled

        return run_tiled(self.generator, frame, self.tile, self.overlap)


@dataclass(frozen=True)
class Networks:
    """Where the frame stylisers get their networks; each is built (or fetched) only when a mode needs it."""

    engine: Callable[[], Any]
    """The optimisation engine (``StyleTransfer``)."""
    fast: Callable[[], FastStylizer]
    preset: Callable[[], PresetStylizer]
    generator: Callable[[str], Any]
    """A CycleGAN generator by name or path."""


def pipeline_mode(mode: str) -> str:
    """The consistency scheme of ``mode`` (:data:`~styletx_core.video.MODES`): the loop's own for optimize
    and hybrid, the feed-forward post-blend for the rest."""
    return mode if mode in ("optimize", "hybrid") else "fast"


def frame_stylizer(mode: str, networks: Networks, styles: Sequence[Image.Image], options: StylizeOptions, *,
                   presets: Sequence[str] = (), model_name: str = "", strength: float = 1.0,
                   processing_size: int | None = None, alpha: float = 0.6, later_iterations: int | None = None,
                   tile: int = 512, overlap: int = 64, controls: Sequence[StyleControl | None] = ()) -> Any:
    """The frame styliser of ``mode`` (one of :data:`FRAME_MODES`); blend weights are
    ``options.style_blend_weights`` (of the styles, or of the presets). ``controls`` (fixed masks, per-style
    layers) apply to the optimising modes."""
    weights = list(options.style_blend_weights) if options.style_blend_weights else None
    builders: dict[str, Callable[[], Any]] = {
        "fast": lambda: FastFrames(networks.fast(), styles, weights, strength, processing_size),
        "preset": lambda: PresetFrames(networks.preset(), presets, weights, processing_size),
        "cyclegan": lambda: CycleGANFrames(networks.generator(model_name), tile, overlap),
        "optimize": lambda: OptimizeFrames(networks.engine(), styles, options, later_iterations,
                                           controls=controls),
        "hybrid": lambda: HybridFrames(networks.engine(), networks.fast(), styles, options, later_iterations,
                                       alpha=alpha, controls=controls),
    }
    if mode not in builders:
        raise OptionError("mode", f"must be one of {', '.join(FRAME_MODES)}; got {mode!r}")
    return builders[mode]()
