"""``styletx-server`` as a subprocess on the fake engine, for the tests that need a real process (signals,
memory, logs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

__all__ = ["start_server"]


def start_server(
    *extra: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], int, list[Any]]:
    """Start ``python -m styletx_server`` with the fake engine; returns the process, its port and its parsed log."""
    environment = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{ROOT}",
        "STYLETX_FAKE_STEP": "0.05",
        **(env or {}),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "styletx_server",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--devices",
            "cpu",
            "--engine-factory",
            "support.fake:make_engine",
            *extra,
        ],
        cwd=ROOT,
        env=environment,
        stderr=subprocess.PIPE,
        text=True,
    )
    log: list[Any] = []
    ready = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            entry = json.loads(line) if line.startswith("{") else {"message": line}
            log.append(entry)
            if "port" in entry:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(60):
        process.kill()
        raise AssertionError(f"server did not start: {log}")
    port = next(e["port"] for e in log if "port" in e)
    return process, port, log
