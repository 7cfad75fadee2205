"""Argument checks and array plumbing shared by the fast stylisers."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from styletx_core.color import match_color, recombine_luminance
from styletx_core.errors import OptionError
from styletx_core.imageio import pil_to_tensor, tensor_to_pil
from styletx_core.options import CHOICES, LIMITS

__all__ = [
    "MIN_NETWORK_SIDE",
    "check_long_side",
    "check_preserve_color",
    "check_strength",
    "check_weights",
    "from_unit_array",
    "histogram_matched",
    "keep_luminance",
    "pad_for_network",
    "to_unit_array",
]

#: Smallest side the networks are run at: their first mirror pad is 4 px wide, so tinier inputs are padded.
MIN_NETWORK_SIDE = 16


def check_long_side(field: str, value: int | None) -> None:
    """``None`` or an int within the engine's size limits."""
    if value is None:
        return
    low, high = LIMITS["size"]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise OptionError(field, f"must be a whole number of pixels from {low:g} to {high:g}, got {value!r}")


def check_strength(strength: float) -> float:
    if isinstance(strength, bool) or not isinstance(strength, int | float) or not math.isfinite(strength) \
            or not 0.0 <= strength <= 1.0:
        raise OptionError("strength", f"must be between 0 and 1, got {strength!r}")
    return float(strength)


def check_preserve_color(value: str) -> str:
    if value not in CHOICES["preserve_color"]:
        allowed = ", ".join(CHOICES["preserve_color"])
        raise OptionError("preserve_color", f"must be one of {allowed}; got {value!r}")
    return value


def check_weights(weights: Sequence[float] | None, count: int) -> np.ndarray:
    """Blend weights normalised to sum 1 (equal when ``None``)."""
    if weights is None:
        return np.full(count, 1.0 / count, dtype=np.float32)
    try:
        values = np.asarray([float(w) for w in weights], dtype=np.float64)
    except (TypeError, ValueError):
        raise OptionError("weights", f"must be numbers, got {list(weights)!r}") from None
    if values.shape != (count,):
        raise OptionError("weights", f"needs one value per style ({count}), got {values.size}")
    if not np.isfinite(values).all() or (values < 0).any() or values.sum() <= 0:
        raise OptionError("weights", "values must be finite, non-negative and not all zero")
    return (values / values.sum()).astype(np.float32)


def to_unit_array(image: Image.Image, size: tuple[int, int] | None = None) -> np.ndarray:
    """H×W×3 float32 in 0–1, resized (Lanczos) only when ``size`` differs from the image's."""
    if size is not None and size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    return np.asarray(image.convert("RGB"), dtype=np.float32) * np.float32(1 / 255)


def from_unit_array(array: np.ndarray) -> Image.Image:
    """H×W×3 float in 0–1 → RGB image, rounded."""
    return Image.fromarray(np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8), "RGB")


def pad_for_network(array: np.ndarray) -> np.ndarray:
    """Reflect-pad H×W×C on the bottom/right to sides that are multiples of 4 and at least 16.

    The networks downsample twice by 2 and upsample back, so other sizes would come out misaligned; reflection
    (the networks' own padding mode) keeps the border statistics natural. Crop with ``[:h, :w]`` afterwards.
    """
    height, width = array.shape[:2]
    target_h = max(MIN_NETWORK_SIDE, -(-height // 4) * 4)
    target_w = max(MIN_NETWORK_SIDE, -(-width // 4) * 4)
    if (target_h, target_w) == (height, width):
        return array
    return np.pad(array, ((0, target_h - height), (0, target_w - width), (0, 0)), mode="reflect")


def keep_luminance(stylised: Image.Image, content: Image.Image) -> Image.Image:
    """The stylised luminance with the content's chroma (Gatys et al. 2016, luminance-only transfer)."""
    return tensor_to_pil(recombine_luminance(pil_to_tensor(stylised), pil_to_tensor(content)))


def histogram_matched(style: Image.Image, content: Image.Image) -> Image.Image:
    """``style`` recoloured to the content's colour mean and covariance, before its embedding is taken.

    This is the paper's colour-histogram variant: the style is made to carry the content's palette, so the
    network paints with the content's colours.
    """
    return tensor_to_pil(match_color(pil_to_tensor(style), pil_to_tensor(content)))
