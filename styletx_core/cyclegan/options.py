"""The CycleGAN settings as plain dataclasses, torch-free: the CLI builds its flags from their defaults
without loading torch (``styletx --help``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import OptionError

__all__ = ["GeneratorConfig", "TrainOptions"]


@dataclass(frozen=True)
class GeneratorConfig:
    """Hyper-parameters that fully determine the generator's parameter shapes."""

    n_blocks: int = 9
    ngf: int = 64
    affine: bool = False
    input_nc: int = 3
    output_nc: int = 3

    def describe(self) -> str:
        """A short human-readable label, used in error messages and model listings."""
        norm = "affine" if self.affine else "non-affine"
        return f"resnet_{self.n_blocks}blocks ngf={self.ngf} {norm} instance norm {self.input_nc}→{self.output_nc}"


@dataclass(frozen=True)
class TrainOptions:
    """Training settings; the defaults are the paper's except ``steps`` (see module doc)."""

    steps: int = 20_000
    decay_from: float = 0.5  # fraction of ``steps`` after which the learning rate decays linearly to 0
    load_size: int = 286  # shorter side images are resized to before the random crop (reference: 286)
    crop_size: int = 256
    batch_size: int = 1
    lr: float = 2e-4
    beta1: float = 0.5
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5  # times lambda_cycle
    pool_size: int = 50
    n_blocks: int = 9
    ngf: int = 64
    ndf: int = 64
    affine: bool = False
    sample_every: int = 500
    checkpoint_every: int = 1000
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA (no loss scaling needed); ignored on CPU
    workers: int = 0

    def validate(self) -> None:
        """Raise ``OptionError`` for out-of-range settings."""
        checks = {
            "steps": self.steps >= 1, "decay_from": 0.0 <= self.decay_from <= 1.0,
            "crop_size": self.crop_size >= 32 and self.crop_size % 4 == 0,
            "load_size": self.load_size >= self.crop_size, "batch_size": self.batch_size >= 1,
            "lr": self.lr > 0, "beta1": 0 <= self.beta1 < 1, "pool_size": self.pool_size >= 0,
            "n_blocks": self.n_blocks >= 0, "ngf": self.ngf >= 1, "ndf": self.ndf >= 1,
            "sample_every": self.sample_every >= 0, "checkpoint_every": self.checkpoint_every >= 0,
            "workers": self.workers >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise OptionError(name, f"invalid value {getattr(self, name)!r}")

    def generator_config(self) -> GeneratorConfig:
        return GeneratorConfig(n_blocks=self.n_blocks, ngf=self.ngf, affine=self.affine)
