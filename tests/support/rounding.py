"""How far a batched job may be from its solo run: a fixed allowance or the solo run's own rounding floor.

Batched and solo optimisations sum in another order, and a dozen L-BFGS steps amplify the rounding: measured 0,
2.0 and 1.1 levels on Zen 4 and 1.7, 9.2 and 3.5 on Zen 5 (tests/test_batch.py). The floor is how far the solo
run moves when the lowest bit of one content pixel is flipped (:func:`flip_lowest_bit`); a job given another's targets is
14–58 levels away.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["FLOOR_FACTOR", "TOLERANCE", "flip_lowest_bit", "pixel_bound"]

#: Mean per-pixel difference (0–255) always allowed between a job's batched image and its solo image.
TOLERANCE = 3
#: How much larger than the solo run's own rounding floor a batched job's difference may be.
FLOOR_FACTOR = 1.5


def flip_lowest_bit(image: Image.Image) -> Image.Image:
    """``image`` with the lowest bit of one pixel's red channel flipped: the smallest change an 8-bit image has."""
    pixels = np.asarray(image.convert("RGB")).copy()
    pixels[3, 3, 0] ^= 1
    return Image.fromarray(pixels)


def pixel_bound(floor: float) -> float:
    """The mean pixel difference allowed for a batched job whose solo run moves ``floor`` when nudged."""
    return max(TOLERANCE, FLOOR_FACTOR * floor)
