"""What the CLI shows and writes while a job runs: a tqdm bar, preview files, a loss plot, a contact sheet."""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from ._errors import StyletxError
from ._events import Accepted, Event, Preview, Progress, QueueUpdate, ResultChunk, Started
from .commandline import print_json

__all__ = ["ProgressReporter", "contact_sheet", "plot_losses", "progress_bar"]

_EXTENSIONS = {"png": "png", "jpeg": "jpg", "tiff16": "tif"}
#: Without a terminal, a plain progress line at most this often (seconds) or every tenth of the job.
LINE_SECONDS = 10.0


def progress_bar(label: str, unit: str, quiet: bool = False) -> Any:
    """A tqdm bar on a terminal; on anything else (a pipe, a log file) a disabled one, so that no carriage-return
    redraws end up in logs. The CLI's one use of tqdm (the ``cli`` extra: the SDK alone needs only grpcio,
    protobuf and Pillow)."""
    try:
        from tqdm import tqdm
    except ImportError:
        raise StyletxError(grpc.StatusCode.FAILED_PRECONDITION,
                           "the styletx CLI shows progress with tqdm: pip install 'styletx-client[cli]'") from None
    return tqdm(total=None, desc=label, unit=unit, disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True)


class ProgressReporter:
    """Called with every event of a job. Shows it as ``style`` says — ``bar`` (tqdm, on a terminal), ``lines``
    (an occasional plain line, for logs), ``json`` (one JSON object per event on stdout) or ``quiet`` — and
    writes previews to ``preview_dir`` as ``<stem>_<iteration>.<ext>``. Remembers the last Progress, for
    "cancelled at iteration N of M"."""

    def __init__(self, label: str, preview_dir: Path | None, stem: str, style: str = "bar") -> None:
        self._label = label
        self._style = style
        self._bar: Any = progress_bar(label, "it") if style == "bar" else None
        self._preview_dir = preview_dir
        self._stem = stem
        self._next_line = 0.0
        self.last: Progress | None = None
        if preview_dir is not None:
            preview_dir.mkdir(parents=True, exist_ok=True)

    def __call__(self, event: Event) -> None:
        if isinstance(event, Progress):
            self.last = event
        if isinstance(event, Preview) and self._preview_dir is not None:
            name = f"{self._stem}_{event.iteration:05d}.{_EXTENSIONS.get(event.format, 'png')}"
            (self._preview_dir / name).write_bytes(event.image)
        if self._style == "json" and not isinstance(event, ResultChunk):
            print_json(type(event).__name__.lower(), event)
        elif self._bar is not None:
            self._update_bar(event)
        elif self._style == "lines":
            self._print_line(event)

    def _update_bar(self, event: Event) -> None:
        bar = self._bar
        if isinstance(event, Accepted | QueueUpdate) and event.queue_position:
            bar.set_postfix_str(f"queued: {event.queue_position} ahead")
        elif isinstance(event, Started):
            bar.reset(total=event.total_iterations)
            bar.set_postfix_str(f"{event.device}, seed {event.seed}")
        elif isinstance(event, Progress):
            bar.update(event.iteration - bar.n)
            bar.set_postfix_str(f"loss {event.loss:.4g}, scale {event.scale_index + 1}/{event.scale_count} "
                                f"{event.width}×{event.height}, eta {event.eta:.0f}s")

    def _print_line(self, event: Event) -> None:
        line = None
        if isinstance(event, Accepted | QueueUpdate) and event.queue_position:
            line = f"queued: {event.queue_position} ahead"
        elif isinstance(event, Started):
            line = f"started on {event.device}, seed {event.seed}, {event.total_iterations} iterations"
        elif isinstance(event, Progress):
            now = time.monotonic()
            step = max(1, event.total_iterations // 10)
            if now >= self._next_line or event.iteration % step == 0 or event.iteration == event.total_iterations:
                self._next_line = now + LINE_SECONDS
                line = (f"iteration {event.iteration}/{event.total_iterations}  loss {event.loss:.4g}  "
                        f"eta {event.eta:.0f}s")
        if line is not None:
            print(f"{self._label}: {line}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def plot_losses(history: Sequence[Progress], path: Path) -> None:
    """Total and per-term loss per iteration, log scale, with the scale changes marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise StyletxError(grpc.StatusCode.FAILED_PRECONDITION,
                           "--loss-plot needs matplotlib: pip install matplotlib") from None
    figure, axes = plt.subplots(figsize=(7, 4))
    steps = [p.iteration for p in history]
    axes.plot(steps, [p.loss for p in history], label="total", linewidth=2)
    for term in sorted({k for p in history for k in p.losses}):
        axes.plot(steps, [p.losses.get(term, float("nan")) for p in history], label=term, linewidth=1)
    for before, after in itertools.pairwise(history):
        if after.scale_index != before.scale_index:
            axes.axvline(after.iteration, color="grey", linestyle=":", linewidth=1)
    axes.set_yscale("log")
    axes.set_xlabel("iteration (dotted: next scale)")
    axes.set_ylabel("loss")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def contact_sheet(paths: Sequence[Path], output: Path, labels: Sequence[str], cell: int = 256) -> Path:
    """A grid of thumbnails (≈ square), each labelled, as one PNG."""
    from PIL import Image, ImageDraw

    columns = max(1, round(len(paths) ** 0.5 + 0.49))
    rows = -(-len(paths) // columns)
    sheet = Image.new("RGB", (columns * cell, rows * (cell + 16)), "white")
    draw = ImageDraw.Draw(sheet)
    for index, (path, label) in enumerate(zip(paths, labels, strict=True)):
        with Image.open(path) as image:
            thumb = image.convert("RGB")
            thumb.thumbnail((cell, cell))
        x, y = (index % columns) * cell, (index // columns) * (cell + 16)
        sheet.paste(thumb, (x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))
        draw.text((x + 4, y + cell + 2), label, fill="black")
    sheet.save(output)
    return output
