"""Colour preservation (Gatys, Bethge, Hertzmann & Shechtman 2016, "Preserving Color in Neural Artistic Style
Transfer"): luminance transfer (the content's chroma with the result's luminance) and colour histogram
matching. Tensors are N×3×H×W RGB in 0–1."""

from __future__ import annotations

import torch

__all__ = ["chroma", "luminance", "match_color", "recombine_luminance", "rgb_to_yiq", "yiq_to_rgb"]

_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]]
)


def rgb_to_yiq(image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,njhw->nihw", _RGB_TO_YIQ.to(image), image)


def yiq_to_rgb(image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(_RGB_TO_YIQ).to(image), image)


def luminance(image: torch.Tensor) -> torch.Tensor:
    """The Y channel (N×1×H×W): what luminance-only colour preservation takes from the result."""
    return torch.einsum("j,njhw->nhw", _RGB_TO_YIQ[0].to(image), image)[:, None]


def chroma(image: torch.Tensor) -> torch.Tensor:
    """The I and Q channels: what colour preservation must keep from the content."""
    return rgb_to_yiq(image)[:, 1:]


def recombine_luminance(luma_source: torch.Tensor, color_source: torch.Tensor) -> torch.Tensor:
    """Y from ``luma_source`` with I and Q from ``color_source`` (resized to match)."""
    if color_source.shape[-2:] != luma_source.shape[-2:]:
        color_source = torch.nn.functional.interpolate(
            color_source, size=luma_source.shape[-2:], mode="bicubic", align_corners=False
        )
    yiq = torch.cat([rgb_to_yiq(luma_source)[:, :1], rgb_to_yiq(color_source)[:, 1:]], dim=1)
    return yiq_to_rgb(yiq).clamp(0, 1)


def match_color(source: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Recolour ``source`` so its RGB mean and covariance equal ``target``'s (the paper's histogram matching
    by a linear map, using symmetric matrix square roots — the "Image Analogies" variant)."""
    src = source.flatten(2).squeeze(0).double()
    tgt = target.flatten(2).squeeze(0).double()
    src_mean, tgt_mean = src.mean(1, keepdim=True), tgt.mean(1, keepdim=True)
    eye = torch.eye(3, dtype=torch.float64)
    src_cov = torch.cov(src) + eps * eye
    tgt_cov = torch.cov(tgt) + eps * eye
    transform = _sqrtm(tgt_cov) @ torch.linalg.inv(_sqrtm(src_cov))
    matched = transform @ (src - src_mean) + tgt_mean
    return matched.float().view_as(source).clamp(0, 1)


def _sqrtm(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T
