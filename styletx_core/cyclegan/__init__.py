"""CycleGAN (Zhu et al. 2017): ResNet generators, loaders, tiled inference, ONNX, training.

For the service: ``GeneratorRegistry(models_dir).names()`` / ``.get(name)``, then
``run_tiled(generator, image, tile, overlap)``. Provenance of the shipped generator: ``MODELS.md``.
"""

from .generator import CycleGANGenerator, GeneratorConfig
from .loaders import KEY_LAYOUTS, build_generator, load_generator
from .onnx import OnnxGenerator, export_onnx
from .pretrained import PRETRAINED, cached_pretrained, fetch_pretrained, fetch_vintagify
from .registry import GeneratorRegistry, ModelInfo
from .tiling import Generator, run_tiled, tile_count, translate_tensor
from .train import TrainIterate, TrainOptions, TrainResult, train_cyclegan

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
