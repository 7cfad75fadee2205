"""A test clip whose motion is known exactly: a camera panning and zooming over a still image.

Because the scene is a plane, the true backward flow of every frame is an affine map and the only occlusions
are pixels that enter through the frame border, so flow estimates and flicker can be scored against truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

__all__ = ["SyntheticClip", "pan_zoom_clip"]


@dataclass
class SyntheticClip:
    """Frames (H×W×3 uint8 RGB) and, from frame 1 on, the true backward flow and its validity mask."""

    frames: list[np.ndarray]
    backward_flows: list[np.ndarray]
    """``backward_flows[t - 1]``: frame t → frame t − 1, H×W×2 float32 (OpenCV convention)."""
    masks: list[np.ndarray]
    """``masks[t - 1]``: 1 where the pixel of frame t was visible in frame t − 1."""


def pan_zoom_clip(
    image: Image.Image,
    frames: int = 24,
    size: tuple[int, int] = (256, 192),
    pan: tuple[float, float] = (2.0, 1.0),
    zoom: float = 1.01,
    coverage: float = 0.6,
) -> SyntheticClip:
    """Render the clip.

    Args:
        image: the scene.
        frames: number of frames.
        size: frame width, height.
        pan: camera motion per frame, in first-frame pixels (x, y).
        zoom: magnification per frame (> 1 zooms in).
        coverage: fraction of the image's width the first frame shows.
    """
    source = np.asarray(image.convert("RGB"))
    scale0 = coverage * source.shape[1] / size[0]  # source pixels per frame pixel at t = 0
    centre0 = np.array([source.shape[1] / 2, source.shape[0] / 2])
    cameras = [(centre0 + t * np.asarray(pan) * scale0, scale0 / zoom**t) for t in range(frames)]
    rendered = [_render(source, size, centre, scale) for centre, scale in cameras]
    flows, masks = [], []
    for t in range(1, frames):
        flow = _backward_flow(size, cameras[t], cameras[t - 1])
        flows.append(flow)
        masks.append(_inside(flow).astype(np.float32))
    return SyntheticClip(rendered, flows, masks)


def _frame_to_source(size: tuple[int, int], centre: np.ndarray, scale: float) -> np.ndarray:
    """2×3 affine matrix taking frame pixel coordinates to source coordinates."""
    half = np.array([(size[0] - 1) / 2, (size[1] - 1) / 2])
    offset = centre - scale * half
    return np.array([[scale, 0.0, offset[0]], [0.0, scale, offset[1]]])


def _render(source: np.ndarray, size: tuple[int, int], centre: np.ndarray, scale: float) -> np.ndarray:
    matrix = _frame_to_source(size, centre, scale)
    # Area-average before sampling when zoomed out, so frames do not alias (as a real camera would not).
    blurred = cv2.GaussianBlur(source, (0, 0), sigmaX=max(0.01, 0.5 * (scale - 1))) if scale > 1 else source
    return cv2.warpAffine(blurred, matrix, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT)


def _backward_flow(size: tuple[int, int], current: tuple[np.ndarray, float],
                   previous: tuple[np.ndarray, float]) -> np.ndarray:
    xs, ys = np.meshgrid(np.arange(size[0], dtype=np.float64), np.arange(size[1], dtype=np.float64))
    cur = _frame_to_source(size, *current)
    prev = _frame_to_source(size, *previous)
    src_x = cur[0, 0] * xs + cur[0, 2]
    src_y = cur[1, 1] * ys + cur[1, 2]
    prev_x = (src_x - prev[0, 2]) / prev[0, 0]
    prev_y = (src_y - prev[1, 2]) / prev[1, 1]
    return np.stack([prev_x - xs, prev_y - ys], axis=2).astype(np.float32)


def _inside(flow: np.ndarray) -> np.ndarray:
    height, width = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(width), np.arange(height))
    x, y = xs + flow[..., 0], ys + flow[..., 1]
    return (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
