"""Every engine option in one frozen dataclass.

The defaults here are the single source of truth: the CLI builds its flags from them, the server validates proto
requests against :data:`LIMITS` and publishes the defaults in ``GetServerInfo``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .errors import OptionError
from .layers import CFGS, STYLE_LAYERS, layer_names

__all__ = ["CHOICES", "KNOWN_LAYERS", "LIMITS", "STYLE_LAYERS", "StylizeOptions"]

#: Inclusive numeric ranges, by option name.
LIMITS: dict[str, tuple[float, float]] = {
    "size": (16, 8192),
    "min_size": (16, 8192),
    "iterations": (1, 10000),
    "coarse_iterations": (0, 10000),
    "scale_step": (1.05, 4.0),
    "learning_rate": (1e-5, 1.0),
    "ema_decay": (0.0, 0.9999),
    "content_weight": (0.0, 1e6),
    "style_weight": (0.0, 1e6),
    "tv_weight": (0.0, 1e6),
    "layout_weight": (0.0, 1e6),
    "style_scale": (0.05, 8.0),
    "style_energy_power": (0.0, 4.0),
    "style_energy_floor": (0.01, 1.0),
    "style_tolerance": (0.0, 10.0),
    "deep_style_tiles": (0, 16),
    "seed": (0, 2**63 - 1),
    "preview_every": (0, 10000),
    "variation_strength": (0.0, 1.0),
}

#: Allowed values of the string options, by option name.
CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": ("lbfgs", "adam"),
    "init": ("content", "noise", "style", "palette"),
    "model": ("vgg19", "vgg16"),
    "pooling": ("max", "avg"),
    "style_loss": ("gram", "w2", "mixed"),
    "preserve_color": ("none", "luminance", "histogram"),
    "precision": ("auto", "fp32", "bf16"),
}

#: The ReLU layers a loss may use, by network.
KNOWN_LAYERS: dict[str, tuple[str, ...]] = {
    model: tuple(name for name in layer_names(model) if name.startswith("relu")) for model in CFGS
}


@dataclass(frozen=True)
class StylizeOptions:
    """Parameters of one stylisation. Sizes are the long side in pixels."""

    size: int = 512
    """Long side of the output image."""
    min_size: int = 128
    """Long side of the first (coarsest) scale; scales grow by ``scale_step`` up to ``size``."""
    scale_step: float = math.sqrt(2)
    iterations: int = 50
    """Iterations at the final scale."""
    coarse_iterations: int = 50
    """Iterations at each coarser scale (cheap: a scale of half the side costs a quarter)."""
    optimizer: str = "lbfgs"
    learning_rate: float = 0.02
    """Adam step size, in units of the 0–1 image range."""
    ema_decay: float = 0.9
    """Adam only: decay of the iterate average that is returned instead of the raw last iterate."""
    init: str = "palette"
    """Start image: ``palette`` — the content recoloured to the style's colour mean and covariance (the photo's
    layout in the painting's palette: muted, dark paintings no longer leave the photo's colours behind);
    ``content``, ``noise`` (neural-style's default) or ``style``."""
    model: str = "vgg19"
    pooling: str = "max"
    content_weight: float = 1.0
    style_weight: float = 8.0
    tv_weight: float = 1.0
    layout_weight: float = 0.1
    """Weight of the layout term: the relative error of the image's blurred luminance (σ = 1/256 of the long side)
    to the photo's, which keeps where its light and dark masses are while the style repaints colour and detail
    (``losses.LayoutLoss``). 0: off."""
    content_layers: tuple[str, ...] = ("relu4_2",)
    style_layers: tuple[str, ...] = STYLE_LAYERS
    style_layer_weights: tuple[float, ...] | None = None
    """Relative weight per style layer; ``None`` weighs every layer equally."""
    style_loss: str = "mixed"
    """``gram`` (Gatys et al.), ``w2`` (mean + covariance on every layer) or ``mixed``: Gram matrices on the texture
    layers and mean + covariance where the painting's motifs live (``layers.MIXED_W2_LAYERS``: relu4_1), whose
    mean a Gram error lets drift. The default: with it the Magenta cosines the Gram loss lost on Starry Night and its
    original-colour twin are won (``bench/results/quality.md``). See ``layers.layer_loss_kind``."""
    style_energy_power: float = 1.0
    """Each style layer's weight × (‖style Gram‖ / ‖content Gram‖) ** this: vivid styles pull harder than muted
    ones, as with Gatys et al.'s unnormalised loss (0: every style alike; 2: the style error is relative to the
    content's Gram norm instead of the style's). See ``targets.energy_factors``."""
    style_energy_floor: float = 1.0
    """The smallest energy ratio (before the power): a muted painting's weight is divided by at most its inverse.
    1 (the default): muted paintings keep the base weight and only vivid ones pull harder; ⅓ divided Picasso's
    Seated Nude's weight by up to 3 and left it short of style under the mixed loss."""
    style_tolerance: float = 0.1
    """The relative Gram error each style layer is driven toward: after every scale, a texture layer still further
    from the style pulls harder at the next (never below its base weight, up to ×16); the deepest layer (relu5_1)
    is driven toward 0.6 and may relax as well as grow (up to ×2); a layer the W2 distance matches, toward 2.5× this
    (``balance.W2_TOLERANCE_RATIO``). 0: fixed weights. See :mod:`styletx_core.balance`."""
    deep_style_tiles: int = 3
    """0: off. N ≥ 2: the deepest style layers' (relu5_*) statistics are the mean over the most typical half of an
    N×N grid of tiles of the painting (the tiles closest to the element-wise median of all tiles), so that an object
    in a few tiles of it (a face, an eye) is not copied into the photo while what most tiles share is kept. The
    default 3: without it, a face from Matisse's Woman with a Hat appears in golden_gate's water
    (``bench/results/quality_layout_notiles.md``). See ``targets.typical_tile_statistics``."""
    style_blend_weights: tuple[float, ...] | None = None
    """Relative weight per style image; ``None`` blends them equally."""
    style_scale: float = 1.0
    """Style image long side relative to the output's: larger values give larger brush strokes."""
    preserve_color: str = "none"
    seed: int | None = None
    """``None`` draws a seed; the result reports the one used so that any run can be repeated."""
    precision: str = "auto"
    """``auto``: bf16 autocast where the device runs bf16 faster than fp32 (CUDA; a CPU where a timing at start-up
    says so: ≈ 1.8× faster on AMD Zen 4, same quality), else fp32. See ``engine.native_bf16``."""
    preview_every: int = 0
    """Offer a preview image every N iterations (0: never)."""
    variation_strength: float = 0.5
    """Only for :meth:`StyleTransfer.variations`: how strongly each variation is randomised."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`OptionError` naming the first option that is out of range."""
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise OptionError(name, f"must be a number, got {type(value).__name__}")
            if not math.isfinite(value) or not low <= value <= high:
                raise OptionError(name, f"must be between {low:g} and {high:g}, got {value!r}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise OptionError(name, f"must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        self._validate_layers()
        self._validate_weights("style_layer_weights", self.style_layer_weights, len(self.style_layers))
        if self.style_blend_weights is not None:
            self._validate_weights("style_blend_weights", self.style_blend_weights, None)
        if self.min_size > self.size:
            object.__setattr__(self, "min_size", self.size)

    def _validate_layers(self) -> None:
        known = KNOWN_LAYERS[self.model]
        for name in ("content_layers", "style_layers"):
            layers = getattr(self, name)
            if not layers:
                raise OptionError(name, "needs at least one layer")
            unknown = [layer for layer in layers if layer not in known]
            if unknown:
                raise OptionError(name, f"{self.model} has no layer(s) {unknown}; known: {', '.join(known)}")

    @staticmethod
    def _validate_weights(name: str, weights: tuple[float, ...] | None, count: int | None) -> None:
        if weights is None:
            return
        if count is not None and len(weights) != count:
            raise OptionError(name, f"needs {count} values, got {len(weights)}")
        if any(not math.isfinite(w) or w < 0 for w in weights) or not any(w > 0 for w in weights):
            raise OptionError(name, "values must be finite, non-negative and not all zero")

    def replace(self, **changes: Any) -> StylizeOptions:
        """A copy with some options changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def scales(self) -> list[int]:
        """Long sides of the coarse-to-fine schedule, ending exactly at ``size``.

        Gatys et al. optimise at one size; growing from ``min_size`` in √2 steps gets the large structures of the
        style right cheaply at low resolution (as crowsonkb/style-transfer-pytorch does).
        """
        sizes = [self.size]
        while round(sizes[-1] / self.scale_step) >= self.min_size:
            sizes.append(round(sizes[-1] / self.scale_step))
        return sizes[::-1]

    def public_dict(self) -> dict[str, Any]:
        """Options as plain values."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
