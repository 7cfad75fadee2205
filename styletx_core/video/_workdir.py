"""The resumable state of a video job: finished frames as PNG files plus a small JSON state file.

Long optimisation runs take minutes per frame; a crash or a Ctrl-C must cost at most the frame in progress.
Each finished frame is written (atomically) before the state says it is done, so the state never claims a
frame that is not on disk.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..artifacts import write_atomic

__all__ = ["WorkDir"]

_LOGGER = logging.getLogger(__name__)
_STATE = "state.json"
_VERSION = 1


class WorkDir:
    """Frames ``frame_000000.png``… and ``state.json`` ``{version, job, frames_done}`` in ``path``.

    ``job`` is a fingerprint of the source file and every setting that changes the output; a directory left by
    a different job is cleared rather than mixed in.
    """

    def __init__(self, path: Path, job: dict[str, Any]) -> None:
        self.path = path
        self.job = job
        self.frames_done = 0
        path.mkdir(parents=True, exist_ok=True)
        state = self._read_state()
        if state is not None and state.get("version") == _VERSION and state.get("job") == job:
            self.frames_done = self._contiguous(int(state.get("frames_done", 0)))
            if self.frames_done:
                _LOGGER.info("resuming %s after %d finished frames", path, self.frames_done)
        elif state is not None or any(path.glob("frame_*.png")):
            _LOGGER.warning("%s holds another job's frames; starting over", path)
            self.clear_frames()

    def _read_state(self) -> dict[str, Any] | None:
        try:
            value = json.loads((self.path / _STATE).read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def _contiguous(self, claimed: int) -> int:
        done = 0
        while done < claimed and self.frame_path(done).exists():
            done += 1
        return done

    def frame_path(self, index: int) -> Path:
        return self.path / f"frame_{index:06d}.png"

    def write(self, index: int, frame: np.ndarray) -> None:
        """Store finished frame ``index`` (H×W×3 uint8), then record it as done."""
        image = Image.fromarray(frame)
        write_atomic(self.frame_path(index), lambda f: image.save(f, format="PNG", compress_level=1))
        self.frames_done = index + 1
        state = {"version": _VERSION, "job": self.job, "frames_done": self.frames_done}
        write_atomic(self.path / _STATE, lambda f: f.write(json.dumps(state, indent=1).encode()))

    def read(self, index: int) -> np.ndarray:
        with Image.open(self.frame_path(index)) as image:
            return np.asarray(image.convert("RGB"))

    def clear_frames(self) -> None:
        for stale in self.path.glob("frame_*.png"):
            stale.unlink()
        (self.path / _STATE).unlink(missing_ok=True)
        self.frames_done = 0

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


