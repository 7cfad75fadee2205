"""Sky and ground masks for the regional-style example (README, "A style per region").

The sky is everything above the horizon line except the bridge (its towers and cables are red-orange: kept out
of the sky so that they take the ground's style); the edge is feathered so the two styles meet softly. Any
greyscale image works as a mask — paint one in an image editor for your own photos.

    python demo/regions/make_masks.py demo/golden_gate.jpg --horizon 0.45 --out masks/
writes masks/sky.png and masks/ground.png (white: the style applies, black: it does not).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter


def sky_mask(photo: Image.Image, horizon: float, feather: float) -> Image.Image:
    """White above ``horizon`` (a share of the height) where the pixel is not red-orange, feathered."""
    rgb = np.asarray(photo.convert("RGB"), dtype=np.float32)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    bridge = (red > 1.3 * green) & (red > 1.3 * blue) & (red > 90)
    above = np.arange(rgb.shape[0])[:, None] < horizon * rgb.shape[0]
    mask = Image.fromarray(np.where(above & ~bridge, 255, 0).astype(np.uint8), "L")
    mask = mask.filter(ImageFilter.MedianFilter(5))  # drop isolated pixels of the cables
    return mask.filter(ImageFilter.GaussianBlur(feather * max(photo.size)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photo", type=Path)
    parser.add_argument("--horizon", type=float, default=0.45, help="horizon height, share of the image from the top")
    parser.add_argument("--feather", type=float, default=0.01, help="edge blur, share of the long side")
    parser.add_argument("--out", type=Path, default=Path("masks"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sky = sky_mask(Image.open(args.photo), args.horizon, args.feather)
    sky.save(args.out / "sky.png")
    Image.eval(sky, lambda value: 255 - value).save(args.out / "ground.png")
    print(f"{args.out / 'sky.png'}  {args.out / 'ground.png'}  sky covers {np.asarray(sky).mean() / 255:.0%}")


if __name__ == "__main__":
    main()
