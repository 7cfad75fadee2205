"""The ResNet generator of Zhu et al. 2017 (CycleGAN), laid out exactly like the reference implementation.

The module tree mirrors junyanz/pytorch-CycleGAN-and-pix2pix ``ResnetGenerator`` (``model.<i>`` in one
``nn.Sequential``, residual blocks as ``model.<i>.conv_block.<j>``), so the reference checkpoints
(``latest_net_G*.pth``) load without any key mapping and our own checkpoints load in the reference code.

Layer indices for ``n_blocks = B`` (indices that hold no parameters are padding, ReLU or Tanh)::

    0 pad7  1 conv7x7  2 norm  3 relu           initial block, ngf channels
    4 conv3x3/2  5 norm  6 relu                 down 1, 2·ngf
    7 conv3x3/2  8 norm  9 relu                 down 2, 4·ngf
    10 … 10+B-1  residual blocks                conv_block: 0 pad, 1 conv, 2 norm, 3 relu, 4 pad, 5 conv, 6 norm
    10+B convT  11+B norm  12+B relu            up 1
    13+B convT  14+B norm  15+B relu            up 2
    16+B pad7  17+B conv7x7  18+B tanh          output in [-1, 1]
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .options import GeneratorConfig

__all__ = ["CycleGANGenerator", "FreezableInstanceNorm", "GeneratorConfig", "NormStats"]


class NormStats:
    """Accumulates per-channel sums of an instance-norm layer's inputs (see ``tiling``)."""

    def __init__(self) -> None:
        self.sum: Tensor | None = None
        self.sumsq: Tensor | None = None
        self.count = 0

    def add(self, x: Tensor) -> None:
        """Add the activations ``x`` (N, C, H, W) to the running sums, in float64."""
        x = x.detach().double()
        s, sq = x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3))
        self.sum = s if self.sum is None else self.sum + s
        self.sumsq = sq if self.sumsq is None else self.sumsq + sq
        self.count += x.shape[0] * x.shape[2] * x.shape[3]

    def mean_var(self) -> tuple[Tensor, Tensor]:
        """Per-channel mean and biased variance (what ``InstanceNorm2d`` uses), as float32."""
        if self.sum is None or self.sumsq is None or self.count == 0:
            raise RuntimeError("no statistics were recorded")
        mean = self.sum / self.count
        var = (self.sumsq / self.count - mean * mean).clamp_min(0.0)
        return mean.float(), var.float()


class FreezableInstanceNorm(nn.InstanceNorm2d):
    """``InstanceNorm2d`` whose statistics can be recorded and then frozen.

    Instance norm normalises with the statistics of the whole input, so a tile of an image would be normalised
    differently from the same pixels in the full image. Tiled inference records the statistics on the whole
    image first (``record``), then runs every tile with them frozen (``frozen``). With both unset it is exactly
    ``nn.InstanceNorm2d`` (same parameters, same state-dict keys, same ONNX export).
    """

    def __init__(self, num_features: int, affine: bool) -> None:
        super().__init__(num_features, affine=affine, track_running_stats=False)
        self.frozen: tuple[Tensor, Tensor] | None = None
        self.record: NormStats | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.record is not None:
            self.record.add(x)
        if self.frozen is None:
            return super().forward(x)
        mean, var = (t.to(device=x.device, dtype=x.dtype)[None, :, None, None] for t in self.frozen)
        y = (x - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


class ResnetBlock(nn.Module):
    """Two reflection-padded 3×3 convolutions with a skip connection (``conv_block`` as in the reference)."""

    def __init__(self, dim: int, affine: bool) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3),
            FreezableInstanceNorm(dim, affine),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3),
            FreezableInstanceNorm(dim, affine),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv_block(x)


def _layers(cfg: GeneratorConfig) -> list[nn.Module]:
    """The reference layer list. Convolutions keep their bias as in the reference (``use_bias`` is true
    for instance norm), which is redundant before a norm but needed for checkpoint compatibility."""
    ngf = cfg.ngf
    layers: list[nn.Module] = [
        nn.ReflectionPad2d(3),
        nn.Conv2d(cfg.input_nc, ngf, kernel_size=7),
        FreezableInstanceNorm(ngf, cfg.affine),
        nn.ReLU(True),
    ]
    for mult in (1, 2):
        layers += [
            nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1),
            FreezableInstanceNorm(ngf * mult * 2, cfg.affine),
            nn.ReLU(True),
        ]
    layers += [ResnetBlock(ngf * 4, cfg.affine) for _ in range(cfg.n_blocks)]
    for mult in (4, 2):
        layers += [
            nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1),
            FreezableInstanceNorm(ngf * mult // 2, cfg.affine),
            nn.ReLU(True),
        ]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, cfg.output_nc, kernel_size=7), nn.Tanh()]
    return layers


class CycleGANGenerator(nn.Module):
    """ResNet generator: images in [-1, 1] (N, 3, H, W) with H, W multiples of 4 → images in [-1, 1].

    Args:
        config: architecture; ``GeneratorConfig()`` is the paper's 9-block, ngf=64 generator.

    Shape:
        input (N, input_nc, H, W), output (N, output_nc, H, W); H and W must be multiples of 4 because of the
        two stride-2 stages (``tiling.run_tiled`` pads arbitrary images).
    """

    def __init__(self, config: GeneratorConfig | None = None) -> None:
        super().__init__()
        self.config = config or GeneratorConfig()
        if self.config.n_blocks < 0 or self.config.ngf < 1:
            raise ValueError(f"invalid generator configuration: {self.config}")
        self.model = nn.Sequential(*_layers(self.config))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def norms(self) -> list[FreezableInstanceNorm]:
        """The instance-norm layers in forward order (used to record and freeze their statistics)."""
        return [m for m in self.modules() if isinstance(m, FreezableInstanceNorm)]

    def extra_repr(self) -> str:
        return self.config.describe()
