"""Fast arbitrary style transfer (Ghiasi et al. 2017): any style image, one forward pass."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from styletx_core.errors import ImageError, OptionError, ResourceLimitError
from styletx_core.progress import StylizeResult

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

__all__ = ["EMBEDDING_SIZE", "STYLE_INPUT_SIZE", "FastStylizer"]

STYLE_INPUT_SIZE = 256
"""The style predictor's fixed input side."""
EMBEDDING_SIZE = 100


class FastStylizer:
    """Feed-forward stylisation with any style image, blendable, at any output size.

    The two networks load on first use; sessions and the LRU cache of style embeddings are safe to share
    between threads (onnxruntime's ``run`` is thread-safe), so a server keeps one instance.

    Args:
        device: ``"auto"`` (CUDA when onnxruntime has it), ``"cpu"`` or ``"cuda"``.
        model_dir: a directory holding the model files. When given, nothing is downloaded and a missing
            file is an error; by default the files live in ``<cache>/fast`` and are fetched when absent.
        cache_dir: overrides ``$STYLETX_CACHE`` for the default model directory.
        embedding_cache_size: how many style embeddings to keep, keyed by a hash of the image's pixels.
        threads: onnxruntime intra-op threads (default: onnxruntime's choice, all cores).
        max_pixels: refuse outputs or network inputs above this many pixels with
            :class:`~styletx_core.errors.ResourceLimitError` (the engine's default limit).
    """

    def __init__(
        self,
        device: str = "auto",
        *,
        model_dir: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        embedding_cache_size: int = 64,
        threads: int | None = None,
        max_pixels: int = 4096 * 4096,
    ) -> None:
        self._pool = _models.SessionPool(device, model_dir, cache_dir, threads)
        self.max_pixels = max_pixels
        self.device = device
        self._lock = threading.Lock()
        self._embeddings: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = embedding_cache_size

    def _session(self, name: str) -> Any:
        return self._pool.get(name)

    def load(self) -> FastStylizer:
        """Open both sessions now (a server calls this at start-up so the first request is not slow)."""
        self._session("arbitrary_predict.onnx")
        self._session("arbitrary_transform.onnx")
        return self

    @property
    def providers(self) -> list[str]:
        """The execution providers the transform network actually runs on."""
        return list(self._session("arbitrary_transform.onnx").get_providers())

    # ---------------------------------------------------------------------------------------------- embedding

    def style_embedding(self, image: Image.Image) -> np.ndarray:
        """The 100-d style embedding of ``image`` (read-only array), cached by a hash of its pixels.

        The image is centre-cropped to a square and resized to 256², as the predictor was trained on
        square crops; cropping keeps brush strokes undistorted where squashing would not.
        """
        key = _pixel_hash(image)
        with self._lock:
            if key in self._embeddings:
                self._embeddings.move_to_end(key)
                return self._embeddings[key]
        embedding = self._predict(image)
        embedding.setflags(write=False)
        with self._lock:
            self._embeddings[key] = embedding
            while len(self._embeddings) > self._cache_size:
                self._embeddings.popitem(last=False)
        return embedding

    def _predict(self, image: Image.Image) -> np.ndarray:
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        square = image.crop((left, top, left + side, top + side))
        array = to_unit_array(square, (STYLE_INPUT_SIZE, STYLE_INPUT_SIZE))[None]
        session = self._session("arbitrary_predict.onnx")
        output = session.run(None, {session.get_inputs()[0].name: array})[0]
        return np.asarray(output, dtype=np.float32).reshape(EMBEDDING_SIZE)

    def embedding_cache_info(self) -> dict[str, int]:
        """``{"size", "capacity"}`` of the style-embedding cache (for metrics)."""
        with self._lock:
            return {"size": len(self._embeddings), "capacity": self._cache_size}

    def mix_embedding(
        self,
        styles: Sequence[Image.Image],
        weights: Sequence[float] | None = None,
        strength: float = 1.0,
        content: Image.Image | None = None,
    ) -> np.ndarray:
        """Σ wᵢ·E(styleᵢ) with normalised weights, moved toward E(content) by ``1 − strength``.

        Interpolating embeddings rather than pixels is how Ghiasi et al. control strength: at 0 the network
        re-renders the content in its own style, which stays close to the photo without a washed-out fade.
        """
        if not styles:
            raise OptionError("styles", "needs at least one style image")
        blend = check_weights(weights, len(styles))
        strength = check_strength(strength)
        mixed = np.zeros(EMBEDDING_SIZE, dtype=np.float32)
        for weight, style in zip(blend, styles, strict=True):
            mixed += weight * self.style_embedding(style)
        if strength < 1.0:
            if content is None:
                raise OptionError("strength", "below 1 needs the content image")
            own = self._predict(content)  # not cached: contents rarely repeat and would evict styles
            mixed = (strength * mixed + (1.0 - strength) * own).astype(np.float32)
        return mixed

    # --------------------------------------------------------------------------------------------- transform

    def render(
        self,
        content: Image.Image,
        embedding: np.ndarray,
        size: int | None = None,
        processing_size: int | None = None,
    ) -> Image.Image:
        """Run the transform network on ``content`` with a ready embedding (the per-frame path for video).

        ``size`` is the output's long side (default: the content's); ``processing_size`` the long side the
        network sees (default: the output's). Sizes are resampled only when they differ.
        """
        check_long_side("size", size)
        check_long_side("processing_size", processing_size)
        out_size = fit_long_side(content.size, size)
        work_size = fit_long_side(content.size, processing_size) if processing_size else out_size
        for what, (width, height) in (("output", out_size), ("processing size", work_size)):
            if width * height > self.max_pixels:
                raise ResourceLimitError(f"{what} {width}×{height} has {width * height} pixels; the limit is "
                                         f"{self.max_pixels}")
        result = from_unit_array(self.transform_array(to_unit_array(content, work_size), embedding))
        if result.size != out_size:
            result = result.resize(out_size, Image.Resampling.LANCZOS)
        return result

    def transform_array(self, content: np.ndarray, embedding: np.ndarray) -> np.ndarray:
        """H×W×3 float32 0–1 in, H×W×3 float32 0–1 out (padded to the network's grid and cropped back)."""
        height, width = content.shape[:2]
        padded = pad_for_network(content)[None]
        vector = np.ascontiguousarray(embedding, dtype=np.float32).reshape(1, 1, 1, EMBEDDING_SIZE)
        session = self._session("arbitrary_transform.onnx")
        names = [i.name for i in session.get_inputs()]
        output = session.run(None, {names[0]: padded, names[1]: vector})[0]
        return np.asarray(output[0, :height, :width])

    # ------------------------------------------------------------------------------------------------ public

    def stylize(
        self,
        content: Image.Image,
        styles: Sequence[Image.Image],
        weights: Sequence[float] | None = None,
        strength: float = 1.0,
        preserve_color: str = "none",
        size: int | None = None,
        processing_size: int | None = None,
    ) -> Image.Image:
        """Stylise ``content`` with a weighted blend of ``styles``.

        Args:
            content: RGB image (see :func:`styletx_core.imageio.load_image`).
            styles: one or more RGB style images.
            weights: relative weight per style (normalised; equal when ``None``).
            strength: 0–1, interpolates from the content's own embedding to the blend.
            preserve_color: ``"none"``, ``"luminance"`` (stylised Y, content chroma) or ``"histogram"``
                (styles recoloured to the content's palette before their embeddings are taken).
            size: output long side; default the content's own (native resolution).
            processing_size: long side the network runs at; e.g. 384 trades detail for speed on big images.

        Raises:
            OptionError: naming the offending argument. ModelError: model files missing or corrupt.
        """
        check_preserve_color(preserve_color)
        _check_image(content, "content")
        for style in styles:
            _check_image(style, "styles")
        if preserve_color == "histogram":
            styles = [histogram_matched(style, content) for style in styles]
        embedding = self.mix_embedding(styles, weights, strength, content)
        result = self.render(content, embedding, size, processing_size)
        if preserve_color == "luminance":
            result = keep_luminance(result, content)
        return result

    def stylize_result(
        self, content: Image.Image, styles: Sequence[Image.Image], **kwargs: Any
    ) -> StylizeResult:
        """:meth:`stylize` wrapped in the engine's :class:`StylizeResult` (no iterations), for the service."""
        start = time.perf_counter()
        image = self.stylize(content, styles, **kwargs)
        return StylizeResult(image=image, seed=0, iterations=0, equivalent_iterations=0.0,
                             elapsed=time.perf_counter() - start)


def _check_image(image: Any, field: str) -> None:
    if not isinstance(image, Image.Image) or image.width < 1 or image.height < 1:
        raise ImageError("must be a non-empty PIL image", field)


def _pixel_hash(image: Image.Image) -> str:
    # sha256 runs on the CPU's SHA extensions (≈ 1 ms for a 1024×640 image here, blake2b ≈ 6 ms).
    digest = hashlib.sha256(image.tobytes())
    digest.update(f"{image.mode}{image.size}".encode())
    return digest.hexdigest()
