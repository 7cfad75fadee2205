"""VGG16/VGG19 feature extractors with layers addressed by name (``"relu4_2"``).

The architecture is data (:data:`~styletx_core.layers.CFGS`, ``"M"`` = pool, torch-free in :mod:`.layers`)
turned into modules by :func:`make_layers`, as in torchvision's ``vgg.py``; only the layers up to the deepest
one in use are built.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers import CFGS, FEATURE_LAYERS, conv_names, layer_names

__all__ = [
    "CFGS",
    "FEATURE_LAYERS",
    "Preprocessing",
    "VGGFeatures",
    "conv_names",
    "layer_names",
    "make_layers",
    "torchvision_to_named",
]


@dataclass(frozen=True)
class Preprocessing:
    """How a weights source expects its input, applied inside the network to an RGB image in 0–1."""

    bgr: bool
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def as_dict(self) -> dict[str, object]:
        return {"bgr": self.bgr, "scale": self.scale, "mean": list(self.mean), "std": list(self.std)}


#: torchvision's ImageNet weights: RGB in 0–1 with mean/std.
TORCHVISION_PREPROCESSING = Preprocessing(False, 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: Caffe-converted weights (the original VGG release, Keras exports): BGR in 0–255 minus the mean pixel.
CAFFE_PREPROCESSING = Preprocessing(True, 255.0, (103.939, 116.779, 123.68))


def make_layers(arch: str, last_layer: str, pooling: str = "max") -> nn.Sequential:
    """Build ``arch`` up to and including ``last_layer``. Average pooling is Gatys et al.'s suggestion."""
    names = layer_names(arch)
    if last_layer not in names:
        raise ValueError(f"{arch} has no layer {last_layer!r}")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    channels = 3
    for name in names[: names.index(last_layer) + 1]:
        if name.startswith("conv"):
            width = CFGS[arch][len([n for n in layers if n.startswith(("conv", "pool"))])]
            assert isinstance(width, int)
            layers[name] = nn.Conv2d(channels, width, kernel_size=3, padding=1)
            channels = width
        elif name.startswith("relu"):
            layers[name] = nn.ReLU(inplace=True)  # halves activation memory; autograd keeps the output it needs
        else:
            layers[name] = nn.MaxPool2d(2, 2) if pooling == "max" else nn.AvgPool2d(2, 2)
    return nn.Sequential(layers)


def torchvision_to_named(state_dict: Mapping[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """Map torchvision keys (``features.0.weight``) to named ones (``conv1_1.weight``); classifier dropped."""
    named: dict[str, torch.Tensor] = {}
    for index, name in enumerate(layer_names(arch)):
        for kind in ("weight", "bias"):
            key = f"features.{index}.{kind}"
            if key in state_dict:
                named[f"{name}.{kind}"] = state_dict[key]
    return named


class VGGFeatures(nn.Module):
    """A truncated VGG returning the activations of the requested layers by name.

    Takes RGB images in 0–1 (N×3×H×W); the weights' own preprocessing is applied first, so callers never
    deal with BGR or Caffe means.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        arch: str,
        state_dict: Mapping[str, torch.Tensor],
        preprocessing: Preprocessing,
        layers: Iterable[str],
        pooling: str = "max",
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.channels_last = channels_last
        self.checkpoint = False
        """Recompute activations segment by segment in the backward pass (the memory plan's lever)."""
        self.layers = tuple(dict.fromkeys(layers))
        names = layer_names(arch)
        unknown = [layer for layer in self.layers if layer not in names]
        if unknown:
            raise ValueError(f"{arch} has no layer(s) {unknown}")
        deepest = max(self.layers, key=names.index)
        self.net = make_layers(arch, deepest, pooling)
        if any(layer.startswith("conv") for layer in self.layers):  # an in-place ReLU would overwrite them
            for module in self.net.modules():
                if isinstance(module, nn.ReLU):
                    module.inplace = False
        needed = {k: v for k, v in state_dict.items() if k.split(".")[0] in self.net._modules}
        self.net.load_state_dict(needed, strict=True)
        self.net.requires_grad_(False).eval()
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.preprocessing = preprocessing
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1) / preprocessing.scale)
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1) / preprocessing.scale)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        if self.preprocessing.bgr:
            image = image.flip(1)
        return (image - self.mean) / self.std

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        wanted = set(self.layers)
        features: dict[str, torch.Tensor] = {}
        x = self.preprocess(image)
        if self.channels_last:
            # oneDNN's (and cuDNN's) fast convolution layout: ≈ 1.4× on a CPU forward + backward (bench/perf.py).
            x = x.contiguous(memory_format=torch.channels_last)
        if self.checkpoint and torch.is_grad_enabled() and x.requires_grad:
            return self._checkpointed(x)
        for name, module in self.net.named_children():
            x = module(x)
            if name in wanted:
                features[name] = x
        return features

    def _checkpointed(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Keep only the requested layers; everything between two of them is recomputed when backpropagating."""
        features: dict[str, torch.Tensor] = {}
        segment: list[nn.Module] = []
        for name, module in self.net.named_children():
            segment.append(module)
            if name in self.layers:
                x = checkpoint(nn.Sequential(*segment), x, use_reentrant=False)
                features[name] = x
                segment = []
        return features

    def extra_repr(self) -> str:
        return f"arch={self.arch}, layers={list(self.layers)}"
