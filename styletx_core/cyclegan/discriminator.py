"""The 70×70 PatchGAN discriminator of CycleGAN (Isola et al. 2017; Zhu et al. 2017), reference key layout.

Three stride-2 4×4 convolutions and two stride-1 ones give each output logit a 70×70 receptive field, so the
discriminator judges local texture and colour rather than global layout. Instance norm as in CycleGAN (the
reference defaults to it for CycleGAN models); no sigmoid, because the least-squares GAN loss regresses the
raw scores to 1 (real) and 0 (fake).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["PatchDiscriminator"]


class PatchDiscriminator(nn.Module):
    """``NLayerDiscriminator(n_layers=3)``: (N, 3, H, W) → (N, 1, H/8 - 2, W/8 - 2) patch scores.

    Args:
        ndf: filters of the first layer (64 in the paper); later layers use 2·, 4·, 8·ndf.
        input_nc: channels of the images judged.
        n_layers: stride-2 layers; 3 gives the 70×70 receptive field.
    """

    def __init__(self, ndf: int = 64, input_nc: int = 3, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1),
                nn.InstanceNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)
