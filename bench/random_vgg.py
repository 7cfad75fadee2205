"""VGG19 weights drawn at random (seeded), for runs where the pretrained ones are absent: tests, the service
benchmark, ``bench/gpu.py`` on a machine without the weights cache. Timing is the same as with the real
weights (same shapes); quality figures are not meaningful."""

from __future__ import annotations

from pathlib import Path


def write_random_vgg19(path: Path) -> Path:
    """Save seeded random VGG19 weights in the engine's named layout as .safetensors at ``path``."""
    import safetensors.torch
    import torch

    from styletx_core.vgg import make_layers

    torch.manual_seed(0)
    net = make_layers("vgg19", "relu5_4")
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            # He initialisation keeps activations at a realistic scale through 16 layers (the default decays).
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            torch.nn.init.uniform_(module.bias, 0.0, 0.1)
    safetensors.torch.save_file(net.state_dict(), str(path))
    return path
