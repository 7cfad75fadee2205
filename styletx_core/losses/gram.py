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
    """Relative squared error between Gram matrices, ‖G − T‖² / ‖T‖²: size- and layer-invariant.

    Gatys et al. weight each layer's raw error by 1/(4N²M²), which still leaves the layers at very different
    scales (crowsonkb divides by the target's L1 norm, which favours layers with large activations: relu1_1 —
    the colour statistics — was matched 4× worse than by neural-style). The relative error weighs every layer
    alike and is the square of the per-layer style distance the quality scores report.
    """

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
        return error / self.target.pow(2).sum().add(self.eps)

    def extra_repr(self) -> str:
        return f"channels={self.target.shape[-1]}"
