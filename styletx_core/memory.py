"""The memory plan: what one scale of a job needs, and how it is made to fit a budget.

Peak memory of an iteration is the activations autograd keeps for the backward pass (linear in the pixel
count: ≈ 1.5 KiB per pixel for VGG19 in fp32) plus the optimiser's state (L-BFGS keeps ``2 × history`` copies
of the image: 15 GB for a 4096×3072 image at the default history of 50). When the estimate exceeds the
budget, the plan, in order:

1. shortens the L-BFGS history (down to :data:`MIN_HISTORY` pairs; convergence barely changes above 10);
2. recomputes activations segment by segment in the backward pass (:attr:`VGGFeatures.checkpoint`), keeping
   only the feature taps: ≈ 30 % less activation memory for one more forward pass (≈ +40 % time);
3. refuses the job with :class:`ResourceLimitError` before any work starts.

Freed activations are kept by the allocator between iterations (:func:`scale_allocator`) when the scale
has room to spare: glibc would otherwise return each one above its mmap threshold (≤ 32 MiB: every activation
from ≈ 1024 px up, relu1_x from 512 px in fp32) to the kernel when autograd frees it, and the next iteration
would page-fault the same memory back in, zero-filled: 13 GB of page faults in five iterations at 1024 px,
+20 % time per iteration, and more the larger the image. Near the budget, blocks are returned as usual.

The estimate is deliberately simple (per-layer tensor sizes, no allocator slack) and is checked against the
measured peak RSS in ``bench/perf.py`` (sections ``scaling`` and ``memory``).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .errors import ResourceLimitError
from .vgg import CFGS, FEATURE_LAYERS, layer_names

__all__ = ["BASE_BYTES", "MIN_HISTORY", "ScalePlan", "activation_bytes", "available_memory", "optimizer_bytes",
           "plan_scale", "release_freed_memory", "scale_allocator", "tune_allocator"]

#: L-BFGS history pairs kept at the very least; below this a job is checkpointed instead.
MIN_HISTORY = 10
#: Weights, targets, interpreter and allocator slack, on top of the per-pixel estimate.
BASE_BYTES = 768 * 2**20


@dataclass(frozen=True)
class ScalePlan:
    """How one scale runs: L-BFGS history, activation checkpointing, and the estimate it was based on."""

    width: int
    height: int
    history_size: int
    checkpoint: bool
    estimate_bytes: int
    budget_bytes: int

    @property
    def reuse_memory(self) -> bool:
        """Keep freed blocks for reuse during this scale (:func:`scale_allocator`): only with room to spare."""
        return self.estimate_bytes <= REUSE_SHARE * self.budget_bytes

    def as_dict(self) -> dict[str, int | bool]:
        return asdict(self) | {"reuse_memory": self.reuse_memory}


def _layers(arch: str, deepest: str = "relu5_1") -> list[tuple[str, int, int]]:
    """(name, channels, downsampling factor per side) of each layer up to ``deepest``."""
    names = layer_names(arch)
    widths = iter(c for c in CFGS[arch] if isinstance(c, int))
    result, channels, factor = [], 3, 1
    for name in names[: names.index(deepest) + 1]:
        if name.startswith("conv"):
            channels = next(widths)
        elif name.startswith("pool"):
            factor *= 2
        result.append((name, channels, factor))
    return result


def activation_bytes(arch: str, pixels: int, precision: str, checkpoint: bool) -> int:
    """Estimated bytes autograd holds at the peak of one forward + backward for an image of ``pixels``.

    Per input pixel: every ReLU output (in place on its convolution's) and pooling output plus its int64
    indices; with ``checkpoint`` only the feature taps plus the largest segment being recomputed. On top, two
    gradients of the largest activation in flight, and under bf16 the fp32 copy of relu1_1 that its Gram
    matrix makes while it runs.
    """
    element = 2 if precision == "bf16" else 4
    taps, segment, segments, largest = 0.0, 0.0, [], 0.0
    for name, channels, factor in _layers(arch):
        if name.startswith("conv"):
            continue
        size = channels / factor**2
        stored = size * element + (size * 8 if name.startswith("pool") else 0)
        largest = max(largest, size * element)
        if name in FEATURE_LAYERS:
            taps += stored
            segments.append(segment)
            segment = 0.0
        else:
            segment += stored
    per_pixel = taps + (max(segments) if checkpoint else sum(segments)) + 2 * largest
    if element != 4:
        per_pixel += 64 * 4
    return int(pixels * per_pixel)


def optimizer_bytes(optimizer: str, image_bytes: int, history: int) -> int:
    vectors = 2 * history + 6 if optimizer == "lbfgs" else 5  # Adam: moments, EMA, image, gradient
    return vectors * image_bytes


def available_memory(device: torch.device) -> int:
    """Bytes a job may use now: free GPU memory, or the kernel's MemAvailable (cgroup limit if lower)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    available = 0
    for line in Path("/proc/meminfo").read_text().splitlines() if Path("/proc/meminfo").exists() else []:
        if line.startswith("MemAvailable:"):
            available = int(line.split()[1]) * 1024
    limit = Path("/sys/fs/cgroup/memory.max")
    if limit.exists() and limit.read_text().strip().isdigit():
        available = min(available or 2**62, int(limit.read_text()))
    return available or int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


# mallopt(3) parameters (glibc's malloc.h) and glibc's defaults for the two that are switched per scale.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
#: A scale reuses freed blocks only if its estimate is at most this share of the budget: a heap that is never
#: trimmed fragments (a 4096 px checkpointed scale outgrew 24 GiB that way; unmapped blocks peak at 15 GiB).
REUSE_SHARE = 0.5

_reuse_lock = threading.Lock()
_scales_without_reuse = 0


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux") or os.environ.get("STYLETX_MALLOC_TUNING", "1") == "0":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 — present only in glibc (not musl)
    except (OSError, AttributeError):
        return None
    return libc


@functools.cache
def tune_allocator() -> bool:
    """One heap for every thread (``M_ARENA_MAX`` 1), so that :func:`scale_allocator` governs all of them.

    A thread's own glibc arena maps any block over 64 MiB afresh whatever the settings. Call it before the
    process starts threads (the server does; the engine does when it is built). True if glibc took it.
    """
    libc = _glibc()
    return libc is not None and libc.mallopt(_M_ARENA_MAX, 1) == 1


def _reuse_blocks(reuse: bool) -> None:
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_MAX, 0 if reuse else _DEFAULT_MMAP_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, -1 if reuse else _DEFAULT_TRIM_THRESHOLD)  # -1: SIZE_MAX, never


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the kernel (between scales, and after a job: an idle server should
    not hold its peak)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@contextlib.contextmanager
def scale_allocator(plan: ScalePlan) -> Iterator[None]:
    """Run one scale with freed blocks kept for reuse (``plan.reuse_memory``) or returned to the kernel.

    Kept, large blocks come from the heap (``M_MMAP_MAX`` 0) and the heap is never trimmed on ``free``, so each
    iteration reuses the last one's activations instead of page-faulting them back in. Process-wide: while any
    scale that must not fragment the heap runs (in any thread), no scale starts reusing.
    """
    global _scales_without_reuse
    with _reuse_lock:
        _scales_without_reuse += not plan.reuse_memory
        _reuse_blocks(plan.reuse_memory and _scales_without_reuse == 0)
    release_freed_memory()  # the last scale's and the targets' blocks: never reused at this size
    try:
        yield
    finally:
        with _reuse_lock:
            _scales_without_reuse -= not plan.reuse_memory
        release_freed_memory()


def plan_scale(arch: str, width: int, height: int, precision: str, optimizer: str, history: int,
               budget: int, batch: int = 1) -> ScalePlan:
    """The cheapest plan for one scale that fits ``budget`` bytes; :class:`ResourceLimitError` if none does.

    ``batch`` jobs optimised together (:mod:`styletx_core.batch`) need ``batch`` times the activations and the
    optimiser state (the weights and the base are shared); every job of the batch gets the same history.
    """
    pixels = width * height * batch
    image_bytes = 3 * pixels * 4

    def estimate(h: int, checkpoint: bool) -> int:
        return BASE_BYTES + activation_bytes(arch, pixels, precision, checkpoint) + optimizer_bytes(
            optimizer, image_bytes, h)

    shortest = min(history, MIN_HISTORY)
    for checkpoint in (False, True):
        if estimate(shortest, checkpoint) <= budget:
            spare = budget - estimate(0, checkpoint)
            fitting = history if optimizer != "lbfgs" else min(history, spare // (2 * image_bytes))
            return ScalePlan(width, height, int(fitting), checkpoint, estimate(int(fitting), checkpoint), budget)
    need = estimate(shortest, True)
    jobs = f"{batch} jobs of " if batch > 1 else ""
    raise ResourceLimitError(
        f"{jobs}a {width}×{height} scale needs about {need / 2**30:.1f} GiB even with activation checkpointing and "
        f"an L-BFGS history of {shortest}; {budget / 2**30:.1f} GiB is available (use a smaller size, bf16 "
        "precision, or a device with more memory)")
