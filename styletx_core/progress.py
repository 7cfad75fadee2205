"""What the optimisation loop reports on each step, and what it returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

__all__ = ["Callback", "Iterate", "StylizeResult"]


@dataclass
class Iterate:
    """One optimisation step, passed to the ``callback`` of :meth:`StyleTransfer.stylize`.

    A callback may raise :class:`~styletx_core.errors.Cancelled` to stop the run between iterations.
    """

    iteration: int
    """Iterations done so far over all scales (1-based)."""
    total_iterations: int
    scale_index: int
    """0-based index into the scale schedule."""
    scale_count: int
    width: int
    height: int
    loss: float
    losses: dict[str, float]
    """Per-term losses: ``content``, ``style``, ``tv`` (weighted, as optimised)."""
    elapsed: float
    """Seconds since the run started (targets included)."""
    eta: float
    """Seconds still expected, from the cost per pixel so far."""
    peak_memory_bytes: int
    preview: Callable[[], Image.Image] | None = None
    """Set on preview iterations: renders the current image (cost is paid only if called)."""
    loss_fresh: bool = True
    """False when ``loss``/``losses`` are those of an earlier iteration: a batch on a GPU reads them from the
    device only every ``StyleTransfer.sync_every`` iterations (and at each scale's end), so that the host never
    waits for the device in between. Progress reporters send these iterations on or skip them as they like."""


Callback = Callable[[Iterate], None]


@dataclass
class StylizeResult:
    """The output image and how it was made."""

    image: Image.Image
    seed: int
    iterations: int
    equivalent_iterations: float
    """Σ iterations × (scale area ÷ final area): the cost in full-resolution iterations."""
    elapsed: float
    losses: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    """Per-iteration ``{iteration, scale, loss, content, style, tv, elapsed}`` for loss curves."""
    memory_plan: list[dict[str, int | bool]] = field(default_factory=list)
    """Per scale: L-BFGS history, activation checkpointing, estimated and budgeted bytes."""
    style_errors: dict[str, float] = field(default_factory=dict)
    """Per style layer: the relative Gram (or W2) error of the result, ‖G − T‖ / ‖T‖."""
    style_multipliers: dict[str, float] = field(default_factory=dict)
    """Per style layer: the weight multiplier the adaptive balance ended at (1 everywhere when it is off)."""
