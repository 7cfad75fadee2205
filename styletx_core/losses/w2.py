from __future__ import annotations

import torch
from torch import nn

from .guide import guide_mass

#: Smallest sᵢ + sⱼ in the backward, relative to the largest root.
_RELATIVE_FLOOR = 1e-3


class _Sqrtm(torch.autograd.Function):
    """Symmetric PSD matrix square root with a stable backward.

    Autograd through ``eigh`` divides by eigenvalue gaps, which are zero for the rank-deficient covariances of
    small feature maps (NaN at once). Differentiating S² = A instead gives the Sylvester equation
    S·dA + dA·S = G, solved in S's eigenbasis by dividing by sᵢ + sⱼ, floored relative to the largest root.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, matrix: torch.Tensor) -> torch.Tensor:
        values, vectors = torch.linalg.eigh(matrix)
        roots = values.clamp_min(0).sqrt()
        ctx.save_for_backward(vectors, roots)
        return vectors @ roots.diag_embed() @ vectors.transpose(-2, -1)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        vectors, roots = ctx.saved_tensors  # type: ignore[attr-defined]
        rotated = vectors.transpose(-2, -1) @ grad @ vectors
        # fp32 eigenvalues below ≈ 1e-7 of the largest are rounding noise (often clamped to 0): a relative floor
        # bounds the gradient to 500× its scale, where an absolute one (1e-12) sent L-BFGS to infinity.
        floor = roots.amax(-1, keepdim=True)[..., None].clamp_min(1e-12) * _RELATIVE_FLOOR
        solved = rotated / (roots[..., :, None] + roots[..., None, :]).clamp_min(floor)
        return vectors @ solved @ vectors.transpose(-2, -1)


def _sqrtm(matrix: torch.Tensor) -> torch.Tensor:
    return _Sqrtm.apply(matrix)


def mean_and_covariance(
    features: torch.Tensor, guide: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean (C) and covariance (C×C) of one feature map, in fp32; with a ``guide`` (1×1×H×W) the
    guide-weighted mean and covariance of the region it covers."""
    flat = features.float().flatten(2)[0]
    if guide is None:
        mean = flat.mean(1)
        centered = flat - mean[:, None]
        return mean, centered @ centered.T / flat.shape[1]
    weights = guide.float().flatten()
    mass = guide_mass(guide).flatten()
    mean = (flat * weights).sum(1) / mass
    centered = flat - mean[:, None]
    return mean, (centered * weights) @ centered.T / mass


class W2StyleLoss(nn.Module):
    """Squared 2-Wasserstein distance between Gaussians fitted to the features (mean + covariance).

    Matches the same statistics as a Gram matrix but separates brightness (mean) from texture (covariance);
    this differs from Gatys et al. and follows crowsonkb/style-transfer-pytorch. ``eps`` keeps the eigenvalue
    gradients finite.
    """

    mean: torch.Tensor
    cov: torch.Tensor
    cov_sqrt: torch.Tensor
    eye: torch.Tensor
    guide: torch.Tensor | None

    def __init__(
        self, mean: torch.Tensor, cov: torch.Tensor, eps: float = 1e-4, guide: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.register_buffer("guide", None if guide is None else guide.detach().float())  # see GramStyleLoss
        eye = torch.eye(cov.shape[-1], dtype=torch.float32, device=cov.device)
        cov = cov.detach().float() + eps * eye
        self.register_buffer("mean", mean.detach().float())
        self.register_buffer("cov", cov)
        self.register_buffer("cov_sqrt", _sqrtm(cov))
        self.register_buffer("eye", eye)
        self.eps = eps

    @property
    def target_energy(self) -> float:
        """‖Σ + μμᵀ‖: the norm of the target's second-moment matrix, i.e. of the Gram matrix it describes."""
        cov = self.cov - self.eps * self.eye
        return float((cov + torch.outer(self.mean, self.mean)).norm())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        with torch.autocast(features.device.type, enabled=False):  # statistics and sqrtm in fp32 under bf16
            mean, cov = mean_and_covariance(features, self.guide)
            cov = cov + self.eps * self.eye
            cross = _sqrtm(self.cov_sqrt @ cov @ self.cov_sqrt)
            distance = (mean - self.mean).pow(2).sum() + torch.trace(self.cov + cov - 2 * cross)
            return distance / torch.trace(self.cov).add(self.mean.pow(2).sum())

    def extra_repr(self) -> str:
        return f"channels={self.mean.shape[0]}, eps={self.eps:g}"
