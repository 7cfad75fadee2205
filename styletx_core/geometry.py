"""Image geometry without torch: the one long-side fit, and the size checks the server runs while validating.

Torch-free on purpose: the server validates requests (and ``styletx-server --help`` builds its limits) from
here without loading the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .errors import ImageError

if TYPE_CHECKING:
    from .options import StylizeOptions

__all__ = ["DEFAULT_MAX_PIXELS", "MIN_SIDE", "check_geometry", "fit_long_side"]

#: Largest decoded image (pixels) accepted by default: a decompression bomb stops here.
DEFAULT_MAX_PIXELS = 50_000_000
#: VGG pools four times before relu5_1: a side under 16 px leaves nothing at the deepest style layer.
MIN_SIDE = 16


def fit_long_side(size: tuple[int, int], long_side: int | None) -> tuple[int, int]:
    """(width, height) with the long side ``long_side`` and the aspect ratio of ``size`` (each side ≥ 1 px);
    ``size`` itself when ``long_side`` is None."""
    if long_side is None:
        return size
    width, height = size
    scale = long_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def check_geometry(content: tuple[int, int], styles: Sequence[tuple[int, int]], opts: StylizeOptions) -> None:
    """Refuse images so thin that a scale of the run would be under :data:`MIN_SIDE` pixels across.

    Cheap (sizes only), so the server calls it while validating, before a job is queued.
    """
    smallest = opts.scales()[0]
    width, height = fit_long_side(content, smallest)
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"is {content[0]}×{content[1]}: at the smallest scale it would be {width}×{height}; "
                         f"both sides must reach {MIN_SIDE} px (use a less elongated image or a larger min_size)",
                         "content")
    style_long = max(MIN_SIDE, round(smallest * opts.style_scale))
    for index, size in enumerate(styles):
        width, height = fit_long_side(size, style_long)
        if min(width, height) < MIN_SIDE:
            raise ImageError(f"is {size[0]}×{size[1]}: resized for the smallest scale it would be "
                             f"{width}×{height}; both sides must reach {MIN_SIDE} px", f"styles[{index}].image")
