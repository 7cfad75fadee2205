from __future__ import annotations

import torch
from torch import nn


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between neighbouring pixels (N×C×H×W → scalar); a mean, so size-independent."""
    dx = image[..., :, 1:] - image[..., :, :-1]
    dy = image[..., 1:, :] - image[..., :-1, :]
    return dx.pow(2).mean() + dy.pow(2).mean()


class TVLoss(nn.Module):
    """Total-variation smoothness prior on the image itself (Mahendran & Vedaldi 2015; used by neural-style)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return total_variation(image)
