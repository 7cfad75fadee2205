from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .guide import guide_mass


def _accumulation_dtype(tensor: torch.Tensor) -> torch.dtype:
    """fp32 for bf16/fp16 features, else the features' own (fp64 stays fp64 for gradient checks)."""
    return torch.promote_types(tensor.dtype, torch.float32)


class _Gram(torch.autograd.Function):
    """XᵀX/P for X = N×P×C positions, with a one-matmul backward.

    Autograd's own backward of ``X.transpose @ X`` runs two matmuls (one per operand) and adds them; since
    both operands are X, the gradient is X(G + Gᵀ)/P — one matmul. The Gram matrices are ≈ 5 % of an
    iteration's FLOPs at 512 px but more of its time (skinny, memory-bound matmuls), so this matters.
    The forward pass accumulates in fp32 whatever the features' precision (the statistic the loss compares).
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, positions: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(positions)  # as given (bf16 under autocast): no fp32 copy is kept alive
        with torch.autocast(positions.device.type, enabled=False):  # fp32 even under bf16 autocast
            wide = positions.to(_accumulation_dtype(positions))
            return wide.transpose(1, 2) @ wide / positions.shape[1]

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (positions,) = ctx.saved_tensors  # type: ignore[attr-defined]
        with torch.autocast(positions.device.type, enabled=False):
            wide = _accumulation_dtype(positions)
            symmetric = (grad.to(wide) + grad.to(wide).transpose(1, 2)) / positions.shape[1]
            # The result feeds a bf16 backward pass anyway: multiply in the features' own precision (the
            # matmul still accumulates in fp32) instead of upcasting them — 4× faster at relu1_1.
            return positions @ symmetric.to(positions.dtype)


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """C×C Gram matrix averaged over positions (N×C×H×W → N×C×C), accumulated in fp32.

    Averaging over H·W instead of summing (Gatys et al.) makes the statistic independent of the image size.
    Channels-last features (the network's layout) are read as N×(H·W)×C without a copy.
    """
    if features.is_contiguous(memory_format=torch.channels_last):
        positions = features.permute(0, 2, 3, 1).flatten(1, 2)
    else:
        positions = features.flatten(2).transpose(1, 2)
    result: torch.Tensor = _Gram.apply(positions)
    return result


def guided_gram_matrix(features: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
    """Σₚ gₚ FₚFₚᵀ / Σₚ gₚ: the Gram matrix of the region ``guide`` (N×1×H×W at the features' size) covers.

    Weighting the features by √g keeps the one-matmul Gram; an all-ones guide gives exactly :func:`gram_matrix`.
    """
    positions = features.shape[-2] * features.shape[-1]
    weighted = features * guide.sqrt().to(features.dtype)
    return gram_matrix(weighted) * (positions / guide_mass(guide))


class GramStyleLoss(nn.Module):
    """Relative squared error between Gram matrices, ‖G − T‖² / ‖T‖²: size- and layer-invariant.

    Gatys et al. weight each layer's raw error by 1/(4N²M²), which still leaves the layers at very different
    scales (crowsonkb divides by the target's L1 norm, which favours layers with large activations: relu1_1 —
    the colour statistics — was matched 4× worse than by neural-style). The relative error weighs every layer
    alike and is the square of the per-layer style distance the quality scores report.
    """

    target: torch.Tensor
    guide: torch.Tensor | None

    def __init__(self, target_gram: torch.Tensor, eps: float = 1e-8, guide: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("target", target_gram.detach().float())
        # The region this style applies to, at the layer's resolution (None: everywhere); a buffer, so that it
        # moves with the module and each job of a batch carries its own.
        self.register_buffer("guide", None if guide is None else guide.detach().float())
        self.eps = eps
        self.norm = float(self.target.pow(2).sum()) + eps

    @staticmethod
    def target_of(features: torch.Tensor) -> torch.Tensor:
        return gram_matrix(features)

    @property
    def target_energy(self) -> float:
        """‖T‖: the norm of the target's second-moment matrix (weighs styles in ``targets.energy_factors``)."""
        return float(self.target.norm())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        gram = gram_matrix(features) if self.guide is None else guided_gram_matrix(features, self.guide)
        error = F.mse_loss(
            gram, self.target.expand(features.shape[0], -1, -1), reduction="sum"
        )
        return error / self.norm

    def extra_repr(self) -> str:
        return f"channels={self.target.shape[-1]}, guided={self.guide is not None}"
