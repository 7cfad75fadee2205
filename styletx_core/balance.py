"""Per-layer style weights that adapt between scales toward a style tolerance.

A fixed style weight lands every content/style pair at a different point of its trade-off: a muted painting
close to the photo barely moves it. neural-style's 1000-iteration results, measured with our relative Gram
error, share something simpler: whatever the pair, each of relu1_1 … relu4_1 ends at a relative error of about
0.1 (relu5_1, object-level statistics, much looser: 0.5–0.7).

So each job's balance is set from what its own optimisation measures: after each scale (the coarsest costs
≈ 3 % of the job) every texture layer's relative error ``r`` is read on the scale's result, and where it is
still above ``tolerance`` the layer's multiplier grows by ``r / tolerance`` (at most ×``MAX_STEP`` per scale,
``cap`` in all) for the next, finer scale. Multipliers never fall below 1: the balance only adds style where it
is missing. Deep layers (``relu5_*``) are left alone: strengthening object-level statistics copies objects —
faces, figures — from the painting into the photo.

The engine combines a layer's multiplier with its energy factor (:func:`styletx_core.targets.energy_factors`)
by taking the larger, not the product: both measure how far the photo is from the style at that layer (a
vivid painting has a large energy ratio *and* a large error), and multiplying them counted that distance twice
— vivid styles then pulled so hard that the content and the style-embedding cosine both lost.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["DEEP_LAYER_PREFIX", "MAX_STEP", "StyleBalance"]

#: Layers from this block on are "deep" (object-level statistics): the balance never strengthens them.
DEEP_LAYER_PREFIX = "relu5"
#: Largest growth of a multiplier per scale, so that one noisy measurement cannot swing the balance.
MAX_STEP = 4.0


@dataclass
class StyleBalance:
    """Per-layer multipliers of the style weights, updated after each scale from the measured errors.

    Args:
        layers: the style layers.
        tolerance: relative error each texture layer is driven toward (0 turns adaptation off: multipliers stay 1).
        cap: upper bound of a multiplier.
    """

    layers: Sequence[str]
    tolerance: float = 0.1
    cap: float = 16.0
    multipliers: dict[str, float] = field(init=False)
    measured: list[dict[str, float]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.multipliers = {layer: 1.0 for layer in self.layers}

    @property
    def active(self) -> bool:
        return self.tolerance > 0

    @staticmethod
    def is_deep(layer: str) -> bool:
        return layer.startswith(DEEP_LAYER_PREFIX)

    def update(self, errors: Mapping[str, float]) -> None:
        """Record one scale's relative errors (per layer, not squared) and grow the multipliers of the texture
        layers still short of the tolerance."""
        self.measured.append(dict(errors))
        if not self.active:
            return
        for layer, error in errors.items():
            if self.is_deep(layer) or not math.isfinite(error) or error <= self.tolerance:
                continue
            step = min(error / self.tolerance, MAX_STEP)
            self.multipliers[layer] = min(self.multipliers[layer] * step, self.cap)

    def factor(self, layer: str, energy: float) -> float:
        """The layer's weight factor: the larger of its multiplier and its energy factor (see the module doc)."""
        return max(self.multipliers[layer], energy)
