"""Style targets (Gram matrices or mean/covariance per layer), computed once per style image and size.

Computing a style's targets costs a full forward pass at the style's resolution; a service sees the same
styles again and again, so the statistics are kept in an LRU cache keyed by the image's pixels and settings.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Generic, TypeVar

import torch
from torch.nn import functional as F

from .balance import DEEP_LAYER_PREFIX
from .layers import layer_loss_kind
from .losses import GramStyleLoss, W2StyleLoss, gram_matrix, guided_gram_matrix, mean_and_covariance
from .options import StylizeOptions
from .vgg import VGGFeatures

__all__ = [
    "ENERGY_RATIO_LIMIT",
    "TYPICAL_TILE_SHARE",
    "Stats",
    "StyleLoss",
    "TargetCache",
    "blend_statistics",
    "energy_factors",
    "style_loss",
    "style_statistics",
    "style_targets",
    "typical_tile_statistics",
]

Stats = dict[str, tuple[torch.Tensor, ...]]
Value = TypeVar("Value")
StyleLoss = GramStyleLoss | W2StyleLoss


class TargetCache(Generic[Value]):
    """A small thread-safe LRU of per-layer style statistics (the engine's targets, the scorer's Grams), with
    hit/miss counters for metrics."""

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[object, ...], Value] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[object, ...]) -> Value | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: tuple[object, ...], value: Value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def clear(self) -> None:
        """Forget every entry (benchmarks measure the uncached cost; counters are kept)."""
        with self._lock:
            self._items.clear()

    def info(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "size": len(self._items), "capacity": self.capacity}


def _layer_statistics(features: torch.Tensor, kind: str) -> tuple[torch.Tensor, ...]:
    """A Gram matrix, or a mean and covariance, of one image's features (1×C×H×W), without the batch axis."""
    if kind == "gram":
        return (gram_matrix(features)[0],)
    return mean_and_covariance(features)


#: Share of a painting's tiles whose statistics make up its deep target (``typical_tile_statistics``): the
#: most typical half (5 of a 3×3 grid) — an object in one or two tiles is outside it even where it spills over.
TYPICAL_TILE_SHARE = 0.5


def _tile_statistics(features: torch.Tensor, kind: str, tiles: int) -> list[tuple[torch.Tensor, ...]]:
    """Each tile's statistics, row by row; tiles a map too small for the grid leaves empty are skipped."""
    height, width = features.shape[-2:]
    rows = [(i * height // tiles, (i + 1) * height // tiles) for i in range(tiles)]
    cols = [(j * width // tiles, (j + 1) * width // tiles) for j in range(tiles)]
    return [
        _layer_statistics(features[..., top:bottom, left:right].contiguous(), kind)
        for top, bottom in rows
        for left, right in cols
        if bottom > top and right > left
    ]


def typical_tile_statistics(
    features: torch.Tensor, kind: str, tiles: int, share: float = TYPICAL_TILE_SHARE
) -> tuple[torch.Tensor, ...]:
    """The mean statistics of the most typical ``share`` of a ``tiles``×``tiles`` grid of the feature map.

    A deep layer's Gram matrix over the whole painting holds its objects: the co-occurrences that make up a face
    or an eye, which the optimisation then paints wherever the photo leaves room (Matisse's Woman with a Hat puts
    eyes in golden_gate's water). Each tile's statistics are compared with the element-wise median of all tiles;
    the tiles closest to it — brushwork, palette, shapes the painting repeats — are averaged, and a tile an object
    makes unusual is left out. Averaging whole tiles rather than taking the median itself keeps the target a
    Gram (or covariance) that some image has (the median of Gram matrices, element by element, is not one, and
    it cost 2–7 % content). Tiles are cut from the feature map of the whole painting, so every feature still sees
    its full context.
    """
    per_tile = _tile_statistics(features, kind, tiles)
    stacked = [torch.stack(values) for values in zip(*per_tile, strict=True)]
    medians = [values.median(0).values for values in stacked]
    distance = torch.stack([
        (values - median).flatten(1).norm(dim=1) / median.norm().clamp_min(1e-12)
        for values, median in zip(stacked, medians, strict=True)
    ]).sum(0)
    keep = max(1, math.ceil(share * len(per_tile)))
    typical = distance.argsort()[:keep]
    return tuple(values[typical].mean(0) for values in stacked)


def _statistics(net: VGGFeatures, style: torch.Tensor, layers: Sequence[str], opts: StylizeOptions) -> Stats:
    with torch.no_grad():
        features = net(style)
    tiles = opts.deep_style_tiles
    return {
        layer: typical_tile_statistics(features[layer], layer_loss_kind(opts.style_loss, layer), tiles)
        if tiles > 1 and layer.startswith(DEEP_LAYER_PREFIX)
        else _layer_statistics(features[layer], layer_loss_kind(opts.style_loss, layer))
        for layer in layers
    }


def _fingerprint(image: torch.Tensor) -> str:
    return hashlib.blake2b(image.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).hexdigest()


def _resize_long(image: torch.Tensor, long_side: int) -> torch.Tensor:
    height, width = image.shape[-2:]
    scale = long_side / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return F.interpolate(image, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)


def style_statistics(
    cache: TargetCache[Stats],
    net: VGGFeatures,
    style: torch.Tensor,
    opts: StylizeOptions,
    long_side: int,
    layers: Sequence[str] | None = None,
) -> Stats:
    """One style image's per-layer statistics at ``long_side`` (``layers``: ``opts.style_layers``), cached."""
    layers = tuple(opts.style_layers if layers is None else layers)
    key = (_fingerprint(style), long_side, net.arch, opts.pooling, opts.style_loss, opts.deep_style_tiles, layers)
    stats = cache.get(key)
    if stats is None:
        stats = _statistics(net, _resize_long(style, long_side), layers, opts)
        cache.put(key, stats)
    return stats


def blend_statistics(stats: Sequence[Stats], weights: Sequence[float]) -> Stats:
    """Per layer, the weighted average of the statistics of the styles that have that layer.

    Blending averages the Gram matrices (or means and covariances), which is how neural-style mixes several
    styles; a layer only some styles use (per-style layers) averages over those styles alone.
    """
    layers = list(dict.fromkeys(layer for entry in stats for layer in entry))
    blended: Stats = {}
    for layer in layers:
        having = [(entry[layer], weight) for entry, weight in zip(stats, weights, strict=True) if layer in entry]
        total = sum(weight for _, weight in having)
        summed: list[torch.Tensor] | None = None
        for values, weight in having:
            scaled = [v * (weight / total) for v in values]
            summed = scaled if summed is None else [a + b for a, b in zip(summed, scaled, strict=True)]
        assert summed is not None
        blended[layer] = tuple(summed)
    return blended


def style_loss(values: tuple[torch.Tensor, ...], guide: torch.Tensor | None = None) -> StyleLoss:
    """The loss module matching ``values`` (a Gram matrix, or a mean and covariance), applied where ``guide`` is."""
    if len(values) == 1:
        return GramStyleLoss(values[0], guide=guide)
    return W2StyleLoss(values[0], values[1], guide=guide)


def style_targets(
    cache: TargetCache[Stats], net: VGGFeatures, styles: Sequence[torch.Tensor], opts: StylizeOptions, long_side: int
) -> dict[str, StyleLoss]:
    """One style-loss module per layer, its target the blend of every style's statistics (``blend_statistics``)."""
    weights = opts.style_blend_weights or [1.0] * len(styles)
    stats = [style_statistics(cache, net, style, opts, long_side) for style in styles]
    return {layer: style_loss(values) for layer, values in blend_statistics(stats, weights).items()}


#: The energy ratio is clamped to [floor, limit] so that a blank content (or style) cannot make a weight explode.
#: With the default power 1 a muted style is divided by at most 3 (it was 9 at power 2, which left muted paintings
#: such as Picasso's Seated Nude under-stylised); :mod:`styletx_core.balance` adds weight where style is missing.
ENERGY_RATIO_LIMIT = 3.0
ENERGY_RATIO_FLOOR = StylizeOptions.style_energy_floor  # one default: the option's


def energy_factors(
    targets: Mapping[str, StyleLoss],
    content_features: Mapping[str, torch.Tensor],
    layers: Sequence[str],
    power: float,
    guides: Mapping[str, torch.Tensor] | None = None,
    floor: float = ENERGY_RATIO_FLOOR,
) -> dict[str, float]:
    """Per style layer: (‖style second moment‖ / ‖content second moment‖) ** ``power``.

    The relative style error weighs every style alike, whatever its texture energy; Gatys et al.'s unnormalised
    error does not: a vivid, high-contrast painting (Starry Night's Gram matrices are 2–3× a photo's) pulls the
    result harder than a muted one (Shipwreck's ≈ 1×). That is the behaviour neural-style's defaults were tuned
    on. The ratio keeps the weight independent of the
    image size and of the network's activation scale; ``power`` 0 turns the weighting off. With ``guides``
    (per layer, a style's region) the content's energy is that of the region's guided Gram matrix. ``floor``
    bounds the ratio from below (``StylizeOptions.style_energy_floor``; 1: muted styles keep the base weight).
    """
    if power == 0:
        return {layer: 1.0 for layer in layers}
    factors = {}
    for layer in layers:
        features = content_features[layer].float()
        guide = None if guides is None else guides.get(layer)
        gram = gram_matrix(features) if guide is None else guided_gram_matrix(features, guide)
        content_energy = float(gram.norm())
        ratio = targets[layer].target_energy / max(content_energy, 1e-12)
        ratio = min(max(ratio, floor), ENERGY_RATIO_LIMIT)
        factors[layer] = ratio**power
    return factors
