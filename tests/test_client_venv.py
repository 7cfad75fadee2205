"""The client installs into a fresh venv without torch (grpcio, protobuf, Pillow, tqdm only) and runs a job.

Slow (≈ 30–60 s: a venv and four wheels from the package index or pip's cache); skipped when the index is
unreachable.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_tool
from support.fake import FakeEngine, ServerThread
from support.requests import png

ROOT = Path(__file__).resolve().parents[1]
CLIENT_DEPS = ("grpcio", "protobuf", "Pillow", "tqdm")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("client-venv")
    venv.EnvBuilder(with_pip=True).create(root / "venv")
    python = root / "venv" / "bin" / "python"
    wheel_dir = root / "wheels"
    # The repo's wheel is built with this venv's setuptools (no build isolation: nothing to download).
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            str(ROOT),
            "-w",
            str(wheel_dir),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in CLIENT_DEPS]
    deps = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", *pins], capture_output=True, text=True, timeout=600
    )
    require_tool(deps.returncode == 0, f"cannot install {pins} from the package index: {deps.stderr[-300:]}")
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", *map(str, wheel_dir.glob("*.whl"))],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return python


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    engine = FakeEngine(step_seconds=0.001)
    thread = ServerThread(lambda device: engine, workers=1)
    yield thread
    thread.stop()


def test_torch_is_absent(client_venv: Path) -> None:
    probe = subprocess.run([str(client_venv), "-c", "import torch"], capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr


def test_sdk_runs_a_job_without_torch(client_venv: Path, server: ServerThread, tmp_path: Path) -> None:
    (tmp_path / "c.png").write_bytes(png())
    script = f"""
import json, sys
from styletx_client import Client
with Client({server.target!r}) as c:
    out = c.stylize({str(tmp_path / "c.png")!r}, [{str(tmp_path / "c.png")!r}], size=64, min_size=64,
                    iterations=2, seed=9, timeout=60)
heavy = sorted(m for m in ("torch", "numpy", "styletx_core", "server") if m in sys.modules)
print(json.dumps({{"seed": out.seed, "size": [out.width, out.height], "heavy": heavy}}))
"""
    result = subprocess.run(
        [str(client_venv), "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"seed": 9, "size": [64, 48], "heavy": []}


def test_cli_remote_and_local_without_engine(client_venv: Path, server: ServerThread, tmp_path: Path) -> None:
    styletx = client_venv.parent / "styletx"
    (tmp_path / "c.png").write_bytes(png())
    args = [
        str(styletx),
        "stylize",
        "c.png",
        "c.png",
        "-o",
        "out.png",
        "--size",
        "64",
        "--min-size",
        "64",
        "--iterations",
        "1",
        "-q",
    ]
    remote = subprocess.run(
        [*args, "--server", server.target], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert remote.returncode == 0, remote.stderr
    assert (tmp_path / "out.png").read_bytes().startswith(b"\x89PNG")
    local = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert local.returncode == 1 and "server + engine distribution" in local.stderr and "Traceback" not in local.stderr
