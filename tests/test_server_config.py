"""``styletx-server`` refuses unusable settings before any slow start-up work: every problem on one line naming
the flag and the variable (and the port), exit status 2, no traceback; and one start-up line says what it serves.

The subprocess tests run ``python -m styletx_server`` with an engine factory that leaves a marker file when it
builds an engine, so "before the slow work" is checked, not assumed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from styletx_server.config import WEIGHT_SOURCES, ConfigError, load_config
from support.process import start_server

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def marking_engine(device: str) -> Any:
    """``--engine-factory test_server_config:marking_engine``: the fake engine, leaving $MARKER behind."""
    from support.fake import make_engine

    Path(os.environ["MARKER"]).write_text(device)
    return make_engine(device)


def run_server(tmp_path: Path, *flags: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT), str(ROOT / "bench")]),
                   "MARKER": str(tmp_path / "engine-built"), **env}
    return subprocess.run([sys.executable, "-m", "styletx_server", "--host", "127.0.0.1", "--port", "0",
                           "--metrics-port", "0", "--devices", "cpu",
                           "--engine-factory", "test_server_config:marking_engine", *flags],
                          env=environment, capture_output=True, text=True, timeout=120, cwd=ROOT)


def refused_lines(tmp_path: Path, result: subprocess.CompletedProcess[str]) -> list[str]:
    """The error lines of a refused start, after checking the refusal's shape."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Event loop is closed" not in result.stderr, result.stderr
    assert not (tmp_path / "engine-built").exists(), "an engine was built before the settings were checked"
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("styletx-server: error: ") for line in lines), result.stderr
    return lines


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another process listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.slow  # a server subprocess
@pytest.mark.parametrize(("env", "names"), [
    ({"STYLETX_QUEUE_SIZE": "abc"}, ["--queue-size / STYLETX_QUEUE_SIZE='abc': not an integer"]),
    ({"STYLETX_WORKERS": "-1"}, ["--workers / STYLETX_WORKERS=-1: must be 0 (one per device) or more"]),
    ({"STYLETX_GRACE": "soon", "STYLETX_LOG_FORMAT": "xml", "STYLETX_PARITY_GATE": "maybe"},
     ["STYLETX_GRACE='soon'", "STYLETX_LOG_FORMAT='xml'", "STYLETX_PARITY_GATE='maybe'"]),
    ({"STYLETX_VGG_WEIGHTS": "file"}, ["--vgg-weights / STYLETX_VGG_WEIGHTS=file needs --vgg-weights-path"]),
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, ["OTEL_TRACES_EXPORTER: 'zipkin' is not an installed exporter"]),
    ({"STYLETX_TLS_CERT": "/nonexistent/tls.crt", "STYLETX_TLS_KEY": "/nonexistent/tls.key"},
     ["STYLETX_TLS_CERT='/nonexistent/tls.crt': no such file", "STYLETX_TLS_KEY='/nonexistent/tls.key'"]),
])
def test_bad_settings_are_one_line_each(tmp_path: Path, env: dict[str, str], names: list[str]) -> None:
    lines = refused_lines(tmp_path, run_server(tmp_path, **env))
    assert len(lines) == len(names)
    for name in names:
        assert [line for line in lines if name in line], f"{name} not named in {lines}"


@pytest.mark.slow  # a server subprocess
def test_flag_is_named_when_the_flag_was_given(tmp_path: Path) -> None:
    lines = refused_lines(tmp_path, run_server(tmp_path, "--port", "abc", STYLETX_PORT="70000"))
    assert lines == ["styletx-server: error: --port='abc': not an integer"]  # the flag wins over the variable


@pytest.mark.slow  # a server subprocess
def test_port_out_of_range(tmp_path: Path) -> None:
    lines = refused_lines(tmp_path, run_server(tmp_path, "--metrics-port", "70000"))
    assert lines == ["styletx-server: error: --metrics-port / STYLETX_METRICS_PORT=70000: must be a port number, "
                     "0-65535 (0: no metrics endpoint)"]


@pytest.mark.slow  # a server subprocess
def test_device_this_host_lacks(tmp_path: Path) -> None:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    lines = refused_lines(tmp_path, run_server(tmp_path, "--devices", f"cpu,cuda:{count}"))
    assert len(lines) == 1 and lines[0].startswith(f"styletx-server: error: --devices / STYLETX_DEVICES: cuda:{count}")


@pytest.mark.slow  # a server subprocess
def test_busy_ports_are_named_before_any_engine_is_built(tmp_path: Path, busy_port: int) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        grpc_port = other.getsockname()[1]
        result = run_server(tmp_path, "--port", str(grpc_port), "--metrics-port", str(busy_port),
                            "--metrics-host", "127.0.0.1")
    lines = refused_lines(tmp_path, result)
    assert len(lines) == 2
    assert lines[0].startswith(f"styletx-server: error: --port / STYLETX_PORT: cannot listen on 127.0.0.1:{grpc_port}")
    assert lines[1].startswith(f"styletx-server: error: --metrics-port / STYLETX_METRICS_PORT: cannot listen on "
                               f"127.0.0.1:{busy_port}")


@pytest.mark.slow  # a server subprocess
def test_startup_line_lists_endpoints_devices_weights_and_limits() -> None:
    process, port, log = start_server("--workers", "2")
    try:
        line = next(entry for entry in log if "port" in entry)
    finally:
        process.terminate()
        process.wait(30)
    message = line["message"]
    assert f"127.0.0.1:{port}" in message and "plaintext" in message and "metrics off" in message
    assert "devices cpu,cpu" in message and "VGG weights auto" in message and "max_size 2048" in message
    assert line["devices"] == ["cpu", "cpu"] and line["limits"]["workers"] == 2 and line["health"] == "SERVING"


def test_old_names_still_work_with_a_warning() -> None:
    config, warnings = load_config(["--weights", "offline"], {"STYLETX_CACHE_DIR": "/srv/cache"})
    assert (config.vgg_weights, config.cache_dir) == ("offline", "/srv/cache")
    assert warnings == ["--weights is deprecated; use --vgg-weights",
                        "STYLETX_CACHE_DIR is deprecated; use STYLETX_CACHE"]
    config, warnings = load_config([], {"STYLETX_CACHE": "/new", "STYLETX_CACHE_DIR": "/old"})
    assert config.cache_dir == "/new" and not warnings


def test_problems_are_collected_not_first_only() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(["--workers", "-1"], {"STYLETX_PORT": "abc", "STYLETX_MAX_SIZE": "0"})
    assert len(caught.value.problems) == 3


def test_weight_sources_match_the_engine() -> None:
    from styletx_core.weights import SOURCES

    assert WEIGHT_SOURCES == SOURCES


def failing_engine(device: str) -> Any:
    """``--engine-factory test_server_config:failing_engine``: what a host without the weights sees."""
    from styletx_core.errors import WeightsUnavailableError

    raise WeightsUnavailableError("offline vgg19 weights are not cached; run `styletx weights fetch`")


@pytest.mark.slow  # a server subprocess
def test_engine_that_cannot_load_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    result = run_server(tmp_path, "--engine-factory", "test_server_config:failing_engine", "--log-format", "text")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "Event loop is closed" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(
        "cannot serve: offline vgg19 weights are not cached; run `styletx weights fetch`")


def test_server_has_a_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """Both binaries answer --version (issue 18, item 6); the server's names its distribution's version."""
    from styletx_server.config import build_parser

    from styletx_core.version import styletx_version

    with pytest.raises(SystemExit) as exited:
        build_parser({}).parse_args(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"styletx-server {styletx_version()}"
