"""Train a CycleGAN (Zhu et al. 2017) on two unpaired image folders.

The objective is the paper's: least-squares GAN losses, cycle consistency weighted λ = 10, identity loss
0.5·λ, 70×70 PatchGAN discriminators that see a 50-image history of generated images, Adam (2e-4, β1 = 0.5)
with the learning rate held then decayed linearly to zero. One departure: the schedule counts optimisation
steps instead of epochs, so domains of different sizes need no epoch bookkeeping (the reference's 100 + 100
epochs over ~1,000 images are ``steps=200_000, decay_from=0.5``).

``train_cyclegan`` writes into ``out_dir``: ``checkpoint.pt`` (everything needed to resume),
``latest_net_G_A.pth`` (A→B) and ``latest_net_G_B.pth`` (B→A) in the reference layout (loadable by
``loaders.load_generator``, the models directory and the reference code), and ``samples/step_NNNNNN.png`` grids.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from ..artifacts import write_atomic
from ..errors import ImageError, ModelError, OptionError
from .discriminator import PatchDiscriminator
from .generator import CycleGANGenerator
from .options import TrainOptions
from .tiling import tensor_to_image

__all__ = ["TrainIterate", "TrainOptions", "TrainResult", "train_cyclegan"]

_LOGGER = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class TrainIterate:
    """Passed to the callback after every step (which may raise ``Cancelled`` to stop after a checkpoint)."""

    step: int
    steps: int
    losses: dict[str, float]
    lr: float
    elapsed: float


@dataclass
class TrainResult:
    """Where the trained generators are and how training went."""

    out_dir: Path
    generator_a2b: Path
    generator_b2a: Path
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ data


def _image_files(directory: Path, field_name: str) -> list[Path]:
    if not directory.is_dir():
        raise OptionError(field_name, f"{directory} is not a directory")
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise OptionError(field_name, f"{directory} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


class UnpairedImages(torch.utils.data.Dataset[tuple[Tensor, Tensor]]):
    """Item ``i``: the ``i``-th image of A and a random image of B, each resized, randomly cropped and flipped
    (the reference's ``resize_and_crop`` + flip). Random choices come from a per-item seed so workers and
    resumed runs draw reproducibly."""

    def __init__(self, files_a: list[Path], files_b: list[Path], opts: TrainOptions, epoch_seed: int) -> None:
        self.files_a, self.files_b, self.opts, self.seed = files_a, files_b, opts, epoch_seed

    def __len__(self) -> int:
        return len(self.files_a)

    def _load(self, path: Path, rng: np.random.Generator) -> Tensor:
        try:
            with Image.open(path) as src:
                img = src.convert("RGB")
        except (OSError, ValueError) as exc:
            raise ImageError(f"cannot read {path}: {exc}", "training image") from None
        scale = self.opts.load_size / min(img.size)
        img = img.resize((max(self.opts.crop_size, round(img.width * scale)),
                          max(self.opts.crop_size, round(img.height * scale))), Image.Resampling.BICUBIC)
        c = self.opts.crop_size
        x, y = int(rng.integers(0, img.width - c + 1)), int(rng.integers(0, img.height - c + 1))
        arr = np.asarray(img.crop((x, y, x + c, y + c)), dtype=np.float32) / 127.5 - 1.0
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        rng = np.random.default_rng([self.seed, i])
        b = self.files_b[int(rng.integers(len(self.files_b)))]
        return self._load(self.files_a[i], rng), self._load(b, rng)


def _batches(files_a: list[Path], files_b: list[Path], opts: TrainOptions, start_epoch: int,
             device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless shuffled batches, one epoch of A after another."""
    epoch = start_epoch
    while True:
        data = UnpairedImages(files_a, files_b, opts, opts.seed * 100_003 + epoch)
        loader = torch.utils.data.DataLoader(
            data, batch_size=opts.batch_size, shuffle=True, drop_last=len(data) >= opts.batch_size,
            num_workers=opts.workers, generator=torch.Generator().manual_seed(opts.seed + epoch),
            pin_memory=device.type == "cuda")
        for a, b in loader:
            yield a.to(device, non_blocking=True), b.to(device, non_blocking=True)
        epoch += 1


class ImagePool:
    """The history of generated images the discriminator sees (Shrivastava et al. 2017), as in the reference:
    until full, pass images through and store them; then return a stored one (swapping in the new) half the
    time, so the discriminator does not forget earlier generator modes."""

    def __init__(self, size: int, generator: torch.Generator) -> None:
        self.size, self.rng = size, generator
        self.images: list[Tensor] = []

    def query(self, batch: Tensor) -> Tensor:
        if self.size == 0:
            return batch
        out = []
        for img in batch.detach():
            if len(self.images) < self.size:
                self.images.append(img)
                out.append(img)
            elif torch.rand((), generator=self.rng) < 0.5:
                i = int(torch.randint(len(self.images), (), generator=self.rng))
                out.append(self.images[i])
                self.images[i] = img
            else:
                out.append(img)
        return torch.stack(out)


# ------------------------------------------------------------------------------------------------ model


def _init_weights(net: nn.Module, generator: torch.Generator) -> None:
    """The reference's "normal" init: conv weights N(0, 0.02), biases 0."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            with torch.no_grad():
                m.weight.normal_(0.0, 0.02, generator=generator)
                if m.bias is not None:
                    m.bias.zero_()


@dataclass
class _State:
    """Networks, optimisers and schedule: everything a checkpoint holds besides the options."""

    g_ab: CycleGANGenerator
    g_ba: CycleGANGenerator
    d_a: PatchDiscriminator
    d_b: PatchDiscriminator
    opt_g: torch.optim.Adam
    opt_d: torch.optim.Adam
    sched_g: torch.optim.lr_scheduler.LambdaLR
    sched_d: torch.optim.lr_scheduler.LambdaLR
    rng: torch.Generator
    step: int = 0

    def networks(self) -> dict[str, nn.Module]:
        return {"G_AB": self.g_ab, "G_BA": self.g_ba, "D_A": self.d_a, "D_B": self.d_b}


def _build(opts: TrainOptions, device: torch.device) -> _State:
    rng = torch.Generator().manual_seed(opts.seed)
    g_ab, g_ba = CycleGANGenerator(opts.generator_config()), CycleGANGenerator(opts.generator_config())
    d_a, d_b = PatchDiscriminator(opts.ndf), PatchDiscriminator(opts.ndf)
    for net in (g_ab, g_ba, d_a, d_b):
        _init_weights(net, rng)
        net.to(device)
        if device.type == "cuda":
            net.to(memory_format=torch.channels_last)
    decay_start = int(opts.steps * opts.decay_from)

    def factor(step: int) -> float:
        """Constant, then linear to zero at ``steps`` (the reference's "linear" lr policy, per step)."""
        return 1.0 - max(0, step - decay_start) / max(1, opts.steps - decay_start + 1)

    opt_g = torch.optim.Adam([*g_ab.parameters(), *g_ba.parameters()], lr=opts.lr, betas=(opts.beta1, 0.999))
    opt_d = torch.optim.Adam([*d_a.parameters(), *d_b.parameters()], lr=opts.lr, betas=(opts.beta1, 0.999))
    return _State(g_ab, g_ba, d_a, d_b, opt_g, opt_d, torch.optim.lr_scheduler.LambdaLR(opt_g, factor),
                  torch.optim.lr_scheduler.LambdaLR(opt_d, factor), rng)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise OptionError("device", "CUDA was requested but is not available")
    return torch.device(name)


# ------------------------------------------------------------------------------------------------ step


def _lsgan(scores: Tensor, real: bool) -> Tensor:
    """Least-squares GAN loss (Mao et al. 2017): regress scores to 1 for real, 0 for fake."""
    return F.mse_loss(scores.float(), torch.full_like(scores, 1.0 if real else 0.0, dtype=torch.float32))


def _generator_step(s: _State, a: Tensor, b: Tensor, opts: TrainOptions,
                    autocast: torch.autocast) -> tuple[dict[str, float], Tensor, Tensor]:
    for d in (s.d_a, s.d_b):
        d.requires_grad_(False)
    lam, lam_idt = opts.lambda_cycle, opts.lambda_cycle * opts.lambda_identity
    with autocast:
        fake_b, fake_a = s.g_ab(a), s.g_ba(b)
        rec_a, rec_b = s.g_ba(fake_b), s.g_ab(fake_a)
        gan = _lsgan(s.d_b(fake_b), True) + _lsgan(s.d_a(fake_a), True)
        cycle = (F.l1_loss(rec_a.float(), a) + F.l1_loss(rec_b.float(), b)) * lam
        idt = torch.zeros((), device=a.device)
        if lam_idt > 0:
            idt = (F.l1_loss(s.g_ab(b).float(), b) + F.l1_loss(s.g_ba(a).float(), a)) * lam_idt
    s.opt_g.zero_grad(set_to_none=True)
    (gan + cycle + idt).backward()
    s.opt_g.step()
    losses = {"G_gan": gan.item(), "cycle": cycle.item(), "idt": idt.item()}
    return losses, fake_a.detach(), fake_b.detach()


def _discriminator_step(s: _State, a: Tensor, b: Tensor, fake_a: Tensor, fake_b: Tensor,
                        autocast: torch.autocast) -> dict[str, float]:
    for d in (s.d_a, s.d_b):
        d.requires_grad_(True)
    with autocast:
        loss_a = 0.5 * (_lsgan(s.d_a(a), True) + _lsgan(s.d_a(fake_a), False))
        loss_b = 0.5 * (_lsgan(s.d_b(b), True) + _lsgan(s.d_b(fake_b), False))
    s.opt_d.zero_grad(set_to_none=True)
    (loss_a + loss_b).backward()
    s.opt_d.step()
    return {"D_A": loss_a.item(), "D_B": loss_b.item()}


# ------------------------------------------------------------------------------------------------ files


def _save_checkpoint(s: _State, opts: TrainOptions, out_dir: Path) -> None:
    """Everything to resume, written atomically; plus the two generators in the reference layout."""
    payload: dict[str, Any] = {name: net.state_dict() for name, net in s.networks().items()}
    payload.update(opt_G=s.opt_g.state_dict(), opt_D=s.opt_d.state_dict(), sched_G=s.sched_g.state_dict(),
                   sched_D=s.sched_d.state_dict(), rng=s.rng.get_state(), step=s.step, options=asdict(opts))
    write_atomic(out_dir / CHECKPOINT, lambda handle: torch.save(payload, handle))
    for name, net in (("latest_net_G_A.pth", s.g_ab), ("latest_net_G_B.pth", s.g_ba)):
        torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, out_dir / name)


_ARCH_FIELDS = ("n_blocks", "ngf", "ndf", "affine")


def _load_checkpoint(s: _State, opts: TrainOptions, path: Path) -> None:
    """Restore ``s`` from ``path`` (weights_only); the architecture must match ``opts``."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        saved = payload["options"]
        diff = [f"{k}: checkpoint {saved.get(k)!r}, now {getattr(opts, k)!r}" for k in _ARCH_FIELDS
                if saved.get(k) != getattr(opts, k)]
        if diff:
            raise ModelError(f"{path}: cannot resume with a different architecture ({'; '.join(diff)})")
        for name, net in s.networks().items():
            net.load_state_dict(payload[name])
        s.opt_g.load_state_dict(payload["opt_G"])
        s.opt_d.load_state_dict(payload["opt_D"])
        s.sched_g.load_state_dict(payload["sched_G"])
        s.sched_d.load_state_dict(payload["sched_D"])
        s.rng.set_state(payload["rng"])
        s.step = int(payload["step"])
    except (KeyError, RuntimeError, OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a usable training checkpoint ({str(exc)[:200]})") from None


def _save_samples(s: _State, a: Tensor, b: Tensor, path: Path) -> None:
    """A grid, one row per sample: real A, A→B, A→B→A, real B, B→A, B→A→B."""
    with torch.no_grad():
        fake_b, fake_a = s.g_ab(a), s.g_ba(b)
        cols = [a, fake_b, s.g_ba(fake_b), b, fake_a, s.g_ab(fake_a)]
    rows = [torch.cat([c[i : i + 1].float().cpu() for c in cols], dim=-1) for i in range(a.shape[0])]
    path.parent.mkdir(parents=True, exist_ok=True)
    tensor_to_image(torch.cat(rows, dim=-2)).save(path)


# ------------------------------------------------------------------------------------------------ loop


def train_cyclegan(dir_a: str | Path, dir_b: str | Path, out_dir: str | Path, opts: TrainOptions | None = None,
                   callback: Callable[[TrainIterate], None] | None = None, resume: bool = True) -> TrainResult:
    """Train generators A→B and B→A on the images under ``dir_a`` and ``dir_b`` (unpaired).

    Args:
        dir_a, dir_b: folders of images (searched recursively); any sizes, at least ``crop_size`` after resize.
        out_dir: checkpoints, generators and sample grids go here (created).
        opts: settings (``TrainOptions()``: the paper's, 20k steps at 256 px).
        callback: called with a ``TrainIterate`` after each step; raising ``Cancelled`` stops the run after
            writing a checkpoint (the exception propagates).
        resume: continue from ``out_dir/checkpoint.pt`` when it exists (``opts.steps`` may be raised).

    Returns:
        ``TrainResult`` with the generator paths and the per-step loss history of this call.
    """
    opts = opts or TrainOptions()
    opts.validate()
    files_a, files_b = _image_files(Path(dir_a), "a"), _image_files(Path(dir_b), "b")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = _resolve_device(opts.device)
    torch.manual_seed(opts.seed)
    s = _build(opts, device)
    if resume and (out / CHECKPOINT).is_file():
        _load_checkpoint(s, opts, out / CHECKPOINT)
        _LOGGER.info("resuming from step %d", s.step)
    result = TrainResult(out, out / "latest_net_G_A.pth", out / "latest_net_G_B.pth", s.step)
    if s.step >= opts.steps:
        return result
    _run(s, opts, files_a, files_b, out, device, callback, result)
    return result


def _run(s: _State, opts: TrainOptions, files_a: list[Path], files_b: list[Path], out: Path,
         device: torch.device, callback: Callable[[TrainIterate], None] | None, result: TrainResult) -> None:
    cuda = device.type == "cuda"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda and opts.amp)
    pool_a, pool_b = ImagePool(opts.pool_size, s.rng), ImagePool(opts.pool_size, s.rng)
    steps_per_epoch = max(1, len(files_a) // opts.batch_size)
    batches = _batches(files_a, files_b, opts, s.step // steps_per_epoch, device)
    fixed: tuple[Tensor, Tensor] | None = None
    start = time.perf_counter()
    for net in s.networks().values():
        net.train()
    try:
        while s.step < opts.steps:
            a, b = next(batches)
            if cuda:
                a, b = a.contiguous(memory_format=torch.channels_last), b.contiguous(memory_format=torch.channels_last)
            fixed = fixed or (a[:4], b[:4])
            losses, fake_a, fake_b = _generator_step(s, a, b, opts, autocast)
            losses |= _discriminator_step(s, a, b, pool_a.query(fake_a), pool_b.query(fake_b), autocast)
            s.sched_g.step()
            s.sched_d.step()
            s.step += 1
            result.history.append(losses)
            result.steps = s.step
            if opts.sample_every and s.step % opts.sample_every == 0:
                _save_samples(s, *fixed, out / "samples" / f"step_{s.step:06d}.png")
            if opts.checkpoint_every and s.step % opts.checkpoint_every == 0:
                _save_checkpoint(s, opts, out)
            if callback is not None:
                callback(TrainIterate(s.step, opts.steps, losses, s.opt_g.param_groups[0]["lr"],
                                      time.perf_counter() - start))
    finally:
        _save_checkpoint(s, opts, out)
