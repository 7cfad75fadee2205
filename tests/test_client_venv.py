"""The client distribution alone (``pip install ./client``) in a fresh venv: grpcio, protobuf and Pillow, no
torch; it runs a job against a server. A distribution with top-level ``client`` and ``server`` packages
installed beside either distribution breaks nothing. The wheels hold only uniquely named packages.

Slow (≈ 30–60 s: venvs and wheels from the package index or pip's cache); skipped when the index is
unreachable.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_tool
from support.fake import FakeEngine, ServerThread
from support.requests import png

ROOT = Path(__file__).resolve().parents[1]
CLIENT_DEPS = ("grpcio", "protobuf", "Pillow")
#: Every top-level import package each distribution installs: unique names only.
TOP_LEVEL = {"styletx-client": {"styletx_client", "styletx_proto"},
             "styletx": {"styletx_core", "styletx_cli", "styletx_server"}}

pytestmark = pytest.mark.slow


def _pip(python: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), "-m", "pip", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both distributions and the dummy one, built with this venv's setuptools (no build isolation)."""
    out = tmp_path_factory.mktemp("wheels")
    dummy = tmp_path_factory.mktemp("dummy")
    (dummy / "pyproject.toml").write_text('[project]\nname = "generic-client-server"\nversion = "1.0"\n'
                                          '[tool.setuptools]\npackages = ["client", "server"]\n')
    for name in ("client", "server"):
        (dummy / name).mkdir()
        (dummy / name / "__init__.py").write_text(f"DUMMY = {name!r}\n")
    for project in (ROOT / "client", ROOT, dummy):
        built = _pip(sys.executable, "wheel", "--no-deps", "--no-build-isolation", "-q", str(project), "-w", str(out))
        assert built.returncode == 0, built.stderr[-2000:]
    return out


def _wheel(wheels: Path, prefix: str) -> Path:
    return next(wheels.glob(f"{prefix}-*.whl"))


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory, wheels: Path) -> Path:
    """A fresh venv with the client wheel, its three requirements and the dummy ``client``/``server``."""
    root = tmp_path_factory.mktemp("client-venv")
    venv.EnvBuilder(with_pip=True).create(root / "venv")
    python = root / "venv" / "bin" / "python"
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in CLIENT_DEPS]
    deps = _pip(python, "install", "-q", *pins)
    require_tool(deps.returncode == 0, f"cannot install {pins} from the package index: {deps.stderr[-300:]}")
    installed = _pip(python, "install", "-q", "--no-deps", str(_wheel(wheels, "styletx_client")),
                     str(_wheel(wheels, "generic_client_server")))
    assert installed.returncode == 0, installed.stderr[-2000:]
    return python


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    engine = FakeEngine(step_seconds=0.001)
    thread = ServerThread(lambda device: engine, workers=1)
    yield thread
    thread.stop()


@pytest.mark.parametrize("distribution", sorted(TOP_LEVEL))
def test_wheels_hold_only_uniquely_named_packages(wheels: Path, distribution: str) -> None:
    wheel = _wheel(wheels, distribution.replace("-", "_"))
    with zipfile.ZipFile(wheel) as archive:
        top = {name.split("/")[0] for name in archive.namelist() if ".dist-info/" not in name}
        metadata = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert top == TOP_LEVEL[distribution]
    if distribution == "styletx-client":
        required = {line.split(":", 1)[1].split(">")[0].split("=")[0].strip().lower()
                    for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line}
        assert required == {"grpcio", "protobuf", "pillow"}


def test_torch_is_absent(client_venv: Path) -> None:
    probe = subprocess.run([str(client_venv), "-c", "import torch"], capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr


def test_sdk_runs_a_job_without_torch_beside_generic_packages(client_venv: Path, server: ServerThread,
                                                              tmp_path: Path) -> None:
    (tmp_path / "c.png").write_bytes(png())
    script = f"""
import json, sys
import client, server
from styletx_client import Client
with Client({server.target!r}) as c:
    out = c.stylize({str(tmp_path / "c.png")!r}, [{str(tmp_path / "c.png")!r}], size=64, min_size=64,
                    iterations=2, seed=9, timeout=60)
heavy = sorted(m for m in ("torch", "numpy", "styletx_core", "styletx_server") if m in sys.modules)
print(json.dumps({{"seed": out.seed, "size": [out.width, out.height], "heavy": heavy,
                  "dummies": [client.DUMMY, server.DUMMY]}}))
"""
    result = subprocess.run([str(client_venv), "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"seed": 9, "size": [64, 48], "heavy": [], "dummies": ["client", "server"]}


def test_cli_remote_and_local_without_engine(client_venv: Path, server: ServerThread, tmp_path: Path) -> None:
    tqdm = _pip(client_venv, "install", "-q", f"tqdm=={importlib.metadata.version('tqdm')}")  # the [cli] extra
    require_tool(tqdm.returncode == 0, f"cannot install tqdm from the package index: {tqdm.stderr[-300:]}")
    styletx = client_venv.parent / "styletx"
    (tmp_path / "c.png").write_bytes(png())
    args = [str(styletx), "stylize", "c.png", "c.png", "-o", "out.png", "--size", "64", "--min-size", "64",
            "--iterations", "1", "-q"]
    remote = subprocess.run([*args, "--server", server.target], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert remote.returncode == 0, remote.stderr
    assert (tmp_path / "out.png").read_bytes().startswith(b"\x89PNG")
    for local_args in (args, [str(styletx), "video", "in.mp4", "out.mp4", "--style", "c.png"]):
        local = subprocess.run(local_args, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert local.returncode == 2 and "server + engine distribution" in local.stderr, local.stderr  # configuration
        assert "Traceback" not in local.stderr


def test_server_and_sdk_beside_generic_packages(tmp_path: Path, wheels: Path) -> None:
    """This venv's packages (the editable server + engine and client) seen from a venv that also has the dummy
    ``client``/``server`` distribution: a real server subprocess and the SDK both work."""
    root = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(root)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(root), "platbase": str(root)}))
    (site / "outer.pth").write_text(f"import site; site.addsitedir({sysconfig.get_path('purelib')!r})\n")
    installed = _pip(sys.executable, "install", "-q", "--no-deps", "--target", str(site),
                     str(_wheel(wheels, "generic_client_server")))
    assert installed.returncode == 0, installed.stderr[-2000:]
    script = f"""
import json, sys
sys.path.insert(0, {str(ROOT / "tests")!r}); sys.path.insert(0, {str(ROOT / "bench")!r})
import client, server
from support.process import start_server
from styletx_client import Client
process, port, _ = start_server()
try:
    with Client(f"127.0.0.1:{{port}}") as c:
        out = c.stylize({str(ROOT / "demo" / "chelsea.jpg")!r}, [{str(ROOT / "demo" / "chelsea.jpg")!r}],
                        size=64, min_size=64, iterations=2, seed=5, timeout=60)
finally:
    process.terminate(); process.wait(30)
print(json.dumps({{"seed": out.seed, "dummies": [client.DUMMY, server.DUMMY]}}))
"""
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([str(root / "bin" / "python"), "-c", script], capture_output=True, text=True,
                            timeout=180, cwd=tmp_path, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"seed": 5, "dummies": ["client", "server"]}
