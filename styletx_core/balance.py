"""Per-layer style weights that adapt between scales toward a style tolerance.

A fixed style weight lands every content/style pair at a different point of its trade-off: a muted painting
close to the photo barely moves it, a vivid one with figures in it gets its deep statistics matched so tightly
that its objects are copied. neural-style's 1000-iteration results, measured with our relative Gram error,
share something simpler: whatever the pair, each of relu1_1 … relu4_1 ends at a relative error of about 0.1,
and relu5_1 — object-level statistics — much looser, at about 0.5–0.7 (the deep tolerance is 0.6, the middle).

So the balance is set per job from what the optimisation measures: after each scale (the coarsest costs ≈ 3 %
of the job), every style layer's relative error ``r`` is read on the scale's result and its weight multiplied
by ``r / tolerance`` (at most ×``MAX_STEP`` either way per scale): a layer still far from the style
pulls harder at the next, finer scale. Texture layers (relu1_1 … relu4_1) never fall below their base weight
(``floor``): the balance only adds style where it is missing. The deepest layers (the ones that copy objects)
get a looser tolerance, may relax below their base weight where they are already closer than it (that keeps
content: measured on the muted pairs), and grow at most to ``deep_cap``.

Measured (``bench/quality.py``, 512 px, CPU): with the palette start and the energy power 1, this lifted the
pairs that beat neural-style on all four measures on the independent VGG16 scorer from 2 of 7 to 5 of 7 under the
Gram loss (``bench/results/quality_gram.md``); the current defaults' figures are in ``bench/results/quality.md``.
Taking the larger of multiplier and energy factor instead of their product, or keeping the deep layer fixed, was
measured too and lost content on the muted pairs. A deep tolerance of 0.5 instead of 0.6 cost golden_gate × Escher
1.7 % of content distance it could not spare.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .layers import layer_loss_kind

__all__ = ["DEEP_LAYER_PREFIX", "StyleBalance"]

#: Layers from this block on are "deep" (object-level statistics): looser tolerance, lower cap.
DEEP_LAYER_PREFIX = "relu5"
#: Largest change of a multiplier per scale (×/÷), so that one noisy measurement cannot swing the balance.
MAX_STEP = 4.0
#: A texture layer matched by the W2 distance (``style_loss`` ``w2`` or ``mixed``) is driven toward this multiple of
#: the tolerance: the relative W2 error of a match as close as a relative Gram error of 0.1 is about 0.25–0.3
#: (measured at relu4_1 on the quality pairs), so the Gram tolerance would pull it 5–10× harder than its Gram twin.
#: 2.5, the close end: 3 left tubingen × Shipwreck's style distance above neural-style's; below 2.5 the motif layer
#: costs layout (Scream's SSIM) and content (golden_gate × Escher).
W2_TOLERANCE_RATIO = 2.5


@dataclass
class StyleBalance:
    """Per-layer multipliers of the style weights, updated after each scale from the measured errors.

    Args:
        layers: the style layers.
        tolerance: relative Gram error each layer is driven toward (0 turns adaptation off: multipliers stay 1).
        deep_tolerance: the same for deep layers (``relu5_*``); 0.5 is about where neural-style leaves them.
        cap: upper bound of a texture layer's multiplier.
        floor: lower bound of a texture layer's multiplier: 1 means the balance only ever adds style where it is
            missing; the base weights (with the energy weighting) are what every style gets at least.
        deep_cap, deep_floor: the bounds of a deep layer's multiplier: it may relax where it is already closer
            than ``deep_tolerance`` (that keeps content) and grows little, since deep terms copy objects.
        loss_kind: the ``style_loss`` option: texture layers it matches by the W2 distance (``layers.layer_loss_kind``)
            are driven toward ``W2_TOLERANCE_RATIO`` × ``tolerance``.
    """

    layers: Sequence[str]
    tolerance: float = 0.1
    deep_tolerance: float = 0.6
    cap: float = 16.0
    deep_cap: float = 2.0
    floor: float = 1.0
    deep_floor: float = 1 / 16
    loss_kind: str = "gram"
    multipliers: dict[str, float] = field(init=False)
    measured: list[dict[str, float]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.multipliers = {layer: 1.0 for layer in self.layers}

    @property
    def active(self) -> bool:
        return self.tolerance > 0

    def is_deep(self, layer: str) -> bool:
        return layer.startswith(DEEP_LAYER_PREFIX)

    def target(self, layer: str) -> float:
        if self.is_deep(layer):
            return self.deep_tolerance
        return self.tolerance * (W2_TOLERANCE_RATIO if layer_loss_kind(self.loss_kind, layer) == "w2" else 1.0)

    def bounds(self, layer: str) -> tuple[float, float]:
        return (self.deep_floor, self.deep_cap) if self.is_deep(layer) else (self.floor, self.cap)

    def update(self, errors: Mapping[str, float]) -> None:
        """Record one scale's relative errors (per layer, not squared) and move each multiplier."""
        self.measured.append(dict(errors))
        if not self.active:
            return
        for layer, error in errors.items():
            if not math.isfinite(error) or error <= 0:
                continue
            step = min(max(error / self.target(layer), 1 / MAX_STEP), MAX_STEP)
            low, high = self.bounds(layer)
            self.multipliers[layer] = min(max(self.multipliers[layer] * step, low), high)
