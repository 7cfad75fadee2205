"""CycleGAN (Zhu et al. 2017): ResNet generators, loaders, tiled inference, ONNX, training.

For the service: ``GeneratorRegistry(models_dir).names()`` / ``.get(name)``, then
``run_tiled(generator, image, tile, overlap)``. Provenance of the shipped generator: ``MODELS.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .generator import CycleGANGenerator
    from .loaders import KEY_LAYOUTS, build_generator, load_generator
    from .onnx import OnnxGenerator, export_onnx
    from .options import GeneratorConfig, TrainOptions
    from .pretrained import PRETRAINED, cached_pretrained, fetch_pretrained, fetch_vintagify
    from .registry import GeneratorRegistry, ModelInfo
    from .tiling import Generator, run_tiled, tile_count, translate_tensor
    from .train import TrainIterate, TrainResult, train_cyclegan

__all__ = [
    "KEY_LAYOUTS",
    "PRETRAINED",
    "CycleGANGenerator",
    "Generator",
    "GeneratorConfig",
    "GeneratorRegistry",
    "ModelInfo",
    "OnnxGenerator",
    "TrainIterate",
    "TrainOptions",
    "TrainResult",
    "build_generator",
    "cached_pretrained",
    "export_onnx",
    "fetch_pretrained",
    "fetch_vintagify",
    "load_generator",
    "run_tiled",
    "tile_count",
    "train_cyclegan",
    "translate_tensor",
]

#: Where each public name lives; resolved on first use so that ``cyclegan.options`` stays torch-free.
_HOMES = {
    "CycleGANGenerator": "generator",
    "Generator": "tiling",
    "GeneratorConfig": "options",
    "GeneratorRegistry": "registry",
    "KEY_LAYOUTS": "loaders",
    "ModelInfo": "registry",
    "OnnxGenerator": "onnx",
    "PRETRAINED": "pretrained",
    "TrainIterate": "train",
    "TrainOptions": "options",
    "TrainResult": "train",
    "build_generator": "loaders",
    "cached_pretrained": "pretrained",
    "export_onnx": "onnx",
    "fetch_pretrained": "pretrained",
    "fetch_vintagify": "pretrained",
    "load_generator": "loaders",
    "run_tiled": "tiling",
    "tile_count": "tiling",
    "train_cyclegan": "train",
    "translate_tensor": "tiling",
}

__getattr__ = lazy_exports(__name__, _HOMES)
