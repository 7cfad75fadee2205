"""examples/node: the Node.js client (grpc-js, proto loaded at run time) streams a Stylize job from a real
``styletx-server`` process and saves the result; npm installs its locked dependencies from the registry first."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import require_tool
from PIL import Image
from support.process import start_server

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "node"
DEMO = ROOT / "demo"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed() -> Path:
    """``npm ci``: exactly the committed package-lock.json (the npm cache makes a rerun offline)."""
    require_tool(bool(shutil.which("node") and shutil.which("npm")),
                 "node and npm are not installed (apt-get install nodejs npm); the example needs them")
    result = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--prefer-offline"], cwd=EXAMPLE,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return EXAMPLE


def node(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["node", str(EXAMPLE / "stylize.js"), *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_streams_a_job_and_saves_the_result(installed: Path, tmp_path: Path) -> None:
    process, port, _ = start_server()
    try:
        out = tmp_path / "out.png"
        result = node("--server", f"127.0.0.1:{port}", str(DEMO / "chelsea.jpg"), str(DEMO / "starry_night.jpg"),
                      "-o", str(out), "--size", "64", "--iterations", "3")
    finally:
        process.terminate()
        process.wait(30)
    assert result.returncode == 0, result.stderr
    assert "accepted" in result.stderr and "iteration 3/" in result.stderr
    with Image.open(out) as image:  # the sha256 the server sent was checked by the client
        assert image.format == "PNG" and max(image.size) == 64


def test_errors_carry_the_grpc_status(installed: Path, tmp_path: Path) -> None:
    process, port, _ = start_server()
    try:
        result = node("--server", f"127.0.0.1:{port}", str(DEMO / "chelsea.jpg"), str(DEMO / "starry_night.jpg"),
                      "-o", str(tmp_path / "out.png"), "--size", "99999")
    finally:
        process.terminate()
        process.wait(30)
    assert result.returncode == 1 and result.stderr.startswith("error: INVALID_ARGUMENT: "), result.stderr
    assert "size" in result.stderr


def test_bad_arguments(installed: Path) -> None:
    result = node("demo/chelsea.jpg")
    assert result.returncode == 2 and result.stderr.startswith("usage: "), result.stderr
