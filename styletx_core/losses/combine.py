from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import cast

import torch
from torch import nn


class Scale(nn.Module):
    """``weight × module(x)``: weights live on the wrapper, not inside each loss."""

    def __init__(self, module: nn.Module, weight: float) -> None:
        super().__init__()
        self.module = module
        self.weight = weight

    def forward(self, *args: object) -> torch.Tensor:
        return self.module(*args) * self.weight

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}"


class LayerApply(nn.Module):
    """Applies ``module`` to one named layer of a feature dict (``None``: to the image itself).

    ``key`` names the term in reports (the style balance's per-layer errors); it defaults to the layer, and
    differs only when several terms read one layer (a style per region: ``styles[1]/relu3_1``).
    """

    def __init__(self, module: nn.Module, layer: str | None, key: str | None = None) -> None:
        super().__init__()
        self.module = module
        self.layer = layer
        self.key = key or layer or "image"

    def forward(self, features: Mapping[str, torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        return self.module(image if self.layer is None else features[self.layer])

    def extra_repr(self) -> str:
        return f"layer={self.layer or 'image'}"


class SumLoss(nn.ModuleDict):
    """Named groups of losses (``content``, ``style``, ``tv``); returns the total and each group's value."""

    def forward(
        self, features: Mapping[str, torch.Tensor], image: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {
            name: sum(
                (loss(features, image) for loss in cast(Iterable[nn.Module], group)),
                torch.zeros((), device=image.device),
            )
            for name, group in self.items()
        }
        return sum(parts.values(), torch.zeros((), device=image.device)), parts
