"""Synthetic CycleGAN data for the tests and bench/cyclegan.py: a structured test image, and two unpaired
photo domains (scikit-image's sample photos, and the same under a fixed colour-and-stripes transform)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["crops", "synthetic", "write_images"]


def synthetic(h: int, w: int) -> torch.Tensor:
    """Gradients, waves and a checkerboard in [-1, 1]: structure at several scales, no flat areas."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    r = torch.sin(xx * 9) * 0.5 + 0.3 * (yy > 0.5)
    g = torch.cos(yy * 7 + xx * 3) * 0.6
    b = ((xx * 8).floor() + (yy * 8).floor()) % 2 - 0.5
    return torch.stack([r, g, b])[None].clamp(-1, 1)


def _domain_b(arr: np.ndarray) -> np.ndarray:
    """A fixed, non-trivial colour and texture transform: a purple channel mix and fine vertical stripes."""
    x = arr.astype(np.float32) / 255
    mix = np.array([[0.30, 0.60, 0.10], [0.25, 0.45, 0.10], [0.55, 0.35, 0.40]], np.float32)
    stripes = 1 + 0.2 * np.sin(np.arange(x.shape[1]) * 2 * np.pi / 6)[None, :, None]
    return (np.clip(x @ mix.T * stripes, 0, 1) * 255).astype(np.uint8)


def crops(n: int, rng: np.random.Generator, transform: bool) -> np.ndarray:
    """Random 96-px crops of scikit-image's sample photos, resized to 72 px (different draws per domain)."""
    import skimage.data as data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    out = []
    for i in range(n):
        photo = photos[i % len(photos)]
        y, x = rng.integers(0, photo.shape[0] - 96), rng.integers(0, photo.shape[1] - 96)
        crop = np.asarray(Image.fromarray(photo[y : y + 96, x : x + 96]).resize((72, 72), Image.Resampling.BICUBIC))
        out.append(_domain_b(crop) if transform else crop)
    return np.stack(out)


def write_images(images: np.ndarray, directory: Path) -> Path:
    directory.mkdir(parents=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(directory / f"{i:03d}.png")
    return directory
