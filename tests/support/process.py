"""``styletx-server`` as a subprocess on the fake engine, for the tests that need a real process (signals,
memory, logs)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import traffic

__all__ = ["start_server"]

TESTS = Path(__file__).resolve().parents[1]


def start_server(*extra: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], int, list[Any]]:
    """:func:`traffic.start_server` with the fake engine (:func:`support.fake.make_engine`)."""
    return traffic.start_server("--engine-factory", "support.fake:make_engine", *extra, env=env,
                                pythonpath=[TESTS])
