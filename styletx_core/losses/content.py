from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ContentLoss(nn.Module):
    """Squared error to the content features, divided by the target's L1 norm.

    Gatys et al. (2016) use a plain sum of squares, whose scale grows with the image; dividing by the target's
    magnitude (as crowsonkb/style-transfer-pytorch does) lets one weight work at every size and layer.
    """

    target: torch.Tensor

    def __init__(self, target: torch.Tensor, eps: float = 1e-8) -> None:
        super().__init__()
        self.register_buffer("target", target.detach().float())
        self.eps = eps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        error = F.mse_loss(features.float(), self.target, reduction="sum")
        import os
        if os.environ.get("STYLETX_NORM") == "rel":
            return error / self.target.pow(2).sum().add(self.eps)
        return error / self.target.abs().sum().add(self.eps)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.target.shape)}"
