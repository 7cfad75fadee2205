"""Loss modules, one idea per file (kornia-style), combined by wrapping: ``Scale(LayerApply(loss, layer), w)``."""

from .combine import LayerApply, Scale, SumLoss
from .content import ContentLoss
from .gram import GramStyleLoss, gram_matrix, guided_gram_matrix
from .guide import guide_at, guide_mass
from .layout import LAYOUT_SIGMA_SHARE, LayoutLoss, blurred_luminance
from .tv import TVLoss, total_variation
from .w2 import W2StyleLoss, mean_and_covariance

__all__ = [
    "LAYOUT_SIGMA_SHARE",
    "ContentLoss",
    "GramStyleLoss",
    "LayerApply",
    "LayoutLoss",
    "Scale",
    "SumLoss",
    "TVLoss",
    "W2StyleLoss",
    "blurred_luminance",
    "gram_matrix",
    "guide_at",
    "guide_mass",
    "guided_gram_matrix",
    "mean_and_covariance",
    "total_variation",
]
