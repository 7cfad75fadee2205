"""Spatial guides: soft masks at a feature map's resolution (Gatys et al. 2017, "Controlling Perceptual Factors").

A guide is a ``1×1×H×W`` map of weights in [0, 1]. A guided statistic weighs each position by the guide and
normalises by the guide's mass, so a region's Gram matrix is comparable with a whole style image's.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["MIN_MASS", "guide_at", "guide_mass"]

#: Below this mass (in positions) a guide covers nothing: its statistics are undefined.
MIN_MASS = 1e-6


def guide_at(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``mask`` (N×1×h×w, values 0–1) area-averaged to ``height``×``width``: the share of each feature's cell the
    region covers, so a thin region never vanishes at a deep layer (bilinear where the map must grow).

    Averaging keeps an all-ones mask exactly ones, so a mask over everything is exactly no mask.
    """
    if mask.shape[-2:] == (height, width):
        return mask.float()
    if mask.shape[-2] >= height and mask.shape[-1] >= width:
        return F.adaptive_avg_pool2d(mask.float(), (height, width)).clamp(0, 1)
    return F.interpolate(mask.float(), size=(height, width), mode="bilinear", align_corners=False).clamp(0, 1)


def guide_mass(guide: torch.Tensor) -> torch.Tensor:
    """Σ guide over positions (per image, N×1×1), floored at :data:`MIN_MASS`."""
    return guide.flatten(1).sum(1).clamp_min(MIN_MASS)[:, None, None]
