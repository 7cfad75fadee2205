"""What the service runs besides the optimisation engine: feed-forward and CycleGAN networks, quality scores,
the ONNX parity gate (:mod:`.models`) and video streams (:mod:`.video`)."""

from .models import ModeModels, ModeSettings, QualityOutcome, ScorerUnavailableError, scorer_network

__all__ = ["ModeModels", "ModeSettings", "QualityOutcome", "ScorerUnavailableError", "scorer_network"]
