from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

from ..color import luminance

#: σ of the blur as a share of the image's long side: 2 px at 512 px (the σ the quality benchmark's layout SSIM
#: reads), 0.5 px at the coarsest default scale. Finer would hold texture the style should repaint; much coarser
#: would let whole objects drift.
LAYOUT_SIGMA_SHARE = 1 / 256


def blurred_luminance(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """N×1×H×W luminance of an N×3×H×W image, Gaussian-blurred with σ = ``sigma`` px (reflected borders), in fp32."""
    luma = luminance(image.float())  # the Y of YIQ, as colour preservation reads it
    size = 2 * math.ceil(3 * sigma) + 1
    return TF.gaussian_blur(luma, [size, size], [sigma, sigma])


class LayoutLoss(nn.Module):
    """Relative squared error of the image's blurred luminance to the content's: ‖B(x) − B(c)‖² / ‖B(c) − mean‖².

    relu4_2's content loss keeps objects recognisable but hardly sees where the picture's light and dark masses
    are: a strong style term may darken a whole sky or lighten a wall and the content distance barely moves. What
    is left after a blur of a few pixels is the photo's composition; holding it with a small weight leaves colour
    and every detail finer than σ to the style, so the style can pull harder without the layout dissolving.
    Relative to the content's own contrast, so the weight means the same for a flat and a contrasty photo.
    ``strength`` (1×1×H×W, as for :class:`ContentLoss`) weighs the error per pixel.
    """

    target: torch.Tensor
    strength: torch.Tensor | None

    def __init__(self, content: torch.Tensor, sigma: float, strength: torch.Tensor | None = None,
                 eps: float = 1e-8) -> None:
        super().__init__()
        target = blurred_luminance(content.detach(), sigma)
        self.register_buffer("target", target)
        self.register_buffer("strength", None if strength is None else strength.detach().float())
        self.sigma = sigma
        self.norm = float((target - target.mean()).pow(2).sum()) + eps

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        with torch.autocast(image.device.type, enabled=False):  # a cheap pixel-space term: fp32 under bf16
            error = (blurred_luminance(image, self.sigma) - self.target).pow(2)
            if self.strength is not None:
                error = error * self.strength
            return error.sum() / self.norm

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:g}, shape={tuple(self.target.shape)}"
