from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ContentLoss(nn.Module):
    """Squared error to the content features relative to the target's: ‖F − C‖² / ‖C‖².

    Gatys et al. (2016) use a plain sum of squares, whose scale grows with the image and differs per layer;
    the relative error is the same at every size and layer, and it is the square of the content distance the
    quality scores report, so the weights trade exactly what is measured.
    """

    target: torch.Tensor
    strength: torch.Tensor | None

    def __init__(self, target: torch.Tensor, eps: float = 1e-8, strength: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("target", target.detach().float())
        # Per-position weight of the error (1×1×H×W at the layer's size; None: 1 everywhere): a content-strength
        # map keeps a face photographic while the background is painted. The norm stays the whole target's, so
        # a map of ones is exactly the plain loss.
        self.register_buffer("strength", None if strength is None else strength.detach().float())
        self.eps = eps
        self.norm = float(self.target.pow(2).sum()) + eps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.strength is None:
            error = F.mse_loss(features.float(), self.target, reduction="sum")
        else:
            error = ((features.float() - self.target).pow(2) * self.strength).sum()
        return error / self.norm

    def extra_repr(self) -> str:
        return f"shape={tuple(self.target.shape)}"
