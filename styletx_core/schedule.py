"""How many optimisation steps a run takes at each scale: one formula for the engine's progress, the
server's Started event, the fake engine of the tests and the benchmarks (torch-free)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .options import StylizeOptions

__all__ = ["scale_iterations", "total_iterations"]


def scale_iterations(opts: StylizeOptions) -> list[int]:
    """Steps at each scale of ``opts.scales()``: ``coarse_iterations`` at the coarser ones, ``iterations`` at
    the last."""
    coarser = len(opts.scales()) - 1
    return [opts.coarse_iterations] * coarser + [opts.iterations]


def total_iterations(opts: StylizeOptions) -> int:
    """Steps of the whole run, as Started announces them."""
    return sum(scale_iterations(opts))
