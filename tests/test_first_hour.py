"""Issue 18, the SDK and CLI half: what a new user tries in the first hour behaves as such tools do.

Results give PIL images and encode by extension; bad output paths fail before the job; ``cancel()`` ends an
iteration cleanly; one style may be a string; options are typed; addresses are forgiving and failures name
them; tokens reach the server; ``--json`` parses; logs get no carriage returns; Ctrl-C cancels and exits 130.
"""

from __future__ import annotations

import asyncio
import http.server
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, get_type_hints

import grpc
import pytest
from conftest import require_tool
from PIL import Image
from styletx_client import AsyncClient, Client, JobOptions, Progress, StyletxError, cli
from styletx_client._options import parse_target
from styletx_client._request import OPTIONS, build_request
from support.fake import FakeEngine, ServerThread

ROOT = Path(__file__).resolve().parents[1]
SMALL: dict[str, Any] = {"size": 64, "min_size": 32, "iterations": 2, "coarse_iterations": 1}
FLAGS = ["--size", "64", "--min-size", "32", "--iterations", "2", "--coarse-iterations", "1"]
STYLETX = [sys.executable, "-c", "import sys; from styletx_client.cli import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def engine(fake: FakeEngine) -> FakeEngine:
    return fake


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _styletx(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess with pipes (not a terminal), as a script or a CI log would run it."""
    return subprocess.run([*STYLETX, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **(env or {})})


# 1. The result is a PIL image and its bytes; save() encodes by extension. ---------------------------------------


def test_result_gives_a_pil_image_and_saves_by_extension(server: ServerThread, images: tuple[Path, Path],
                                                         tmp_path: Path) -> None:
    with Client(server.target, timeout=30) as client:
        out = client.stylize(images[0], images[1], **SMALL)
    assert isinstance(out.image, Image.Image) and out.image.size == (64, 48)
    assert Image.open(io.BytesIO(out.data)).format == "PNG"
    for name, fmt in {"a.png": "PNG", "b.jpg": "JPEG", "c.webp": "WEBP", "d.tif": "TIFF", "e/f/g.jpeg": "JPEG"}.items():
        with Image.open(out.save(tmp_path / name)) as written:
            assert written.format == fmt and written.size == (64, 48), name
    assert (tmp_path / "a.png").read_bytes() == out.data  # same format: the bytes as received


def test_sixteen_bit_tiff_stays_sixteen_bit(server: ServerThread, images: tuple[Path, Path], tmp_path: Path) -> None:
    with Client(server.target, timeout=30) as client:
        out = client.stylize(images[0], [images[1]], output_format="tiff16", **SMALL)
    assert out.save(tmp_path / "deep.tiff").read_bytes() == out.data
    with Image.open(tmp_path / "deep.tiff") as written:
        assert written.tag_v2[258] == (16, 16, 16)  # BitsPerSample


def test_unknown_extension_is_refused_before_writing(server: ServerThread, images: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    with Client(server.target, timeout=30) as client:
        out = client.stylize(images[0], [images[1]], **SMALL)
    with pytest.raises(StyletxError) as caught:
        out.save(tmp_path / "x.gif")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and ".webp" in caught.value.message
    assert not (tmp_path / "x.gif").exists()


# 2, 3. Every command encodes by extension and checks the output before the job. ---------------------------------


def test_cli_writes_webp_and_jpeg(server: ServerThread, images: tuple[Path, Path], tmp_path: Path) -> None:
    for name, fmt in {"out.webp": "WEBP", "sub/out.jpg": "JPEG", "out.tif": "TIFF"}.items():
        code = cli.main(["stylize", *map(str, images), "-o", str(tmp_path / name), "--server", server.target,
                         "-q", *FLAGS])
        assert code == 0
        with Image.open(tmp_path / name) as written:
            assert written.format == fmt, name


@pytest.mark.parametrize("output", ["out.gif", "out", "blocker/out.png"])
def test_bad_output_fails_before_the_job(server: ServerThread, engine: FakeEngine, images: tuple[Path, Path],
                                         tmp_path: Path, capsys: pytest.CaptureFixture[str], output: str) -> None:
    (tmp_path / "blocker").write_text("a file where a folder should be")
    runs = engine.runs
    code = cli.main(["stylize", *map(str, images), "-o", str(tmp_path / output), "--server", server.target, *FLAGS])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("styletx: error: --output") and err.count("\n") == 1
    assert engine.runs == runs  # nothing ran


# 9. SDK: cancel() inside the loop ends it; one style may be given alone; options are typed. ----------------------


def test_cancel_inside_the_loop_ends_the_iteration(server: ServerThread, images: tuple[Path, Path]) -> None:
    with Client(server.target, timeout=30) as client:
        stream = client.stylize_stream(images[0], images[1], size=64, min_size=32, iterations=200)
        seen = []
        for event in stream:
            seen.append(event)
            if isinstance(event, Progress):
                stream.cancel()
        assert isinstance(seen[-1], Progress) and seen[-1].iteration < 200


def test_async_cancel_inside_the_loop_ends_the_iteration(server: ServerThread, images: tuple[Path, Path]) -> None:
    async def run() -> list[Any]:
        async with AsyncClient(server.target, timeout=30) as client:
            stream = client.stylize_stream(images[0], images[1], size=64, min_size=32, iterations=200)
            seen = []
            async for event in stream:
                seen.append(event)
                if isinstance(event, Progress):
                    stream.cancel()
            return seen

    seen = asyncio.run(run())
    assert isinstance(seen[-1], Progress) and seen[-1].iteration < 200


def test_one_style_as_a_string_or_a_weighted_pair(images: tuple[Path, Path]) -> None:
    assert len(build_request(images[0], str(images[1])).styles) == 1
    assert build_request(images[0], (images[1], 0.5)).styles[0].weight == 0.5
    assert len(build_request(images[0], [images[1], (images[1], 2.0)]).styles) == 2
    with pytest.raises(StyletxError, match=r"styles\[0\].image: expected bytes, a path or a PIL image"):
        build_request(images[0], [42])  # type: ignore[list-item]
    with pytest.raises(StyletxError, match=r"styles\[0\].image: cannot read"):
        build_request(images[0], "no-such-style.jpg")


def test_options_are_typed_and_checked_before_sending(images: tuple[Path, Path]) -> None:
    hints = get_type_hints(JobOptions)
    assert set(hints) == set(OPTIONS) | {"style_masks", "style_own_layers", "style_own_layer_weights",
                                         "content_strength", "region_presets"} and hints["size"] is int
    assert "Long side of the output image" in (OPTIONS["size"].help or "")
    with pytest.raises(TypeError, match="unknown option 'sise'"):
        build_request(images[0], images[1], sise=64)  # type: ignore[call-arg]
    with pytest.raises(StyletxError, match="optimizer: must be one of lbfgs, adam") as caught:
        build_request(images[0], images[1], optimizer="sgd")  # type: ignore[typeddict-item]
    assert caught.value.field == "params.optimizer"
    with pytest.raises(StyletxError, match=r"^INVALID_ARGUMENT: size:"):
        build_request(images[0], images[1], size="big")  # type: ignore[typeddict-item]
    request = build_request(images[0], images[1], size=64, strength=0.5, tile=64, preview_format="png",
                            output_format="jpg")
    assert (request.params.size, request.fast.strength, request.cyclegan.tile) == (64, 0.5, 64)
    assert request.preview.format == 1 and request.output_format == 2


def test_package_is_typed_and_versioned() -> None:
    import styletx_client
    from styletx_client import _events

    assert (ROOT / "client/styletx_client/py.typed").exists()
    assert styletx_client.__version__ and "__version__" in styletx_client.__all__
    for name in ("Accepted", "QueueUpdate", "Started", "Progress", "Preview", "ResultChunk", "Completed",
                 "Quality", "StylizeOutput"):
        assert (getattr(_events, name).__doc__ or "").strip(), name


# 8. Connections: forgiving addresses, failures that name them. --------------------------------------------------


def test_addresses_are_normalised() -> None:
    assert parse_target("localhost") == ("localhost:50051", False)
    assert parse_target("http://localhost:50061/") == ("localhost:50061", False)
    assert parse_target("grpc://10.0.0.1") == ("10.0.0.1:50051", False)
    assert parse_target("https://styletx.example.com") == ("styletx.example.com:50051", True)
    assert parse_target("[::1]") == ("[::1]:50051", False)
    assert parse_target("dns:///styletx:7000") == ("dns:///styletx:7000", False)
    with pytest.raises(StyletxError, match="unknown scheme"):
        parse_target("ftp://x")


def test_http_prefix_reaches_the_server(server: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["health", "--server", f"http://{server.target}"]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"


def test_down_server_is_one_line_naming_the_address(images: tuple[Path, Path], tmp_path: Path) -> None:
    port = _free_port()
    done = _styletx("stylize", *map(str, images), "-o", str(tmp_path / "x.png"), "--server", f"localhost:{port}",
                    *FLAGS, "--timeout", "5")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"styletx: error: cannot reach localhost:{port}"), done.stderr
    assert "is styletx-server running" in lines[0] and "Traceback" not in done.stderr


class _QuietHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_http_port_is_one_line_naming_the_address(capsys: pytest.CaptureFixture[str]) -> None:
    """A port that speaks HTTP/1 (the metrics port) instead of gRPC."""
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _QuietHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        code = cli.main(["health", "--server", f"127.0.0.1:{httpd.server_port}", "--timeout", "5"])
    finally:
        httpd.shutdown()
    err = capsys.readouterr().err
    assert code == 1 and err.startswith(f"styletx: error: cannot reach 127.0.0.1:{httpd.server_port}")
    assert err.count("\n") == 1


# 5. Tokens from the command line, a file or the environment. ---------------------------------------------------


def test_cli_sends_tokens(images: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    thread = ServerThread(lambda device: FakeEngine(step_seconds=0), auth_tokens="s3cret")
    try:
        base = ["stylize", *map(str, images), "--server", thread.target, "-q", *FLAGS]
        assert cli.main([*base, "-o", str(tmp_path / "none.png")]) == 2
        assert "styletx: error:" in capsys.readouterr().err
        assert cli.main([*base, "-o", str(tmp_path / "flag.png"), "--token", "s3cret"]) == 0
        (tmp_path / "token").write_text("s3cret\n")
        assert cli.main([*base, "-o", str(tmp_path / "file.png"), "--token-file", str(tmp_path / "token")]) == 0
        monkeypatch.setenv("STYLETX_TOKEN", "s3cret")
        assert cli.main(["info", "--server", thread.target]) == 0  # the default comes from the environment
    finally:
        thread.stop()


# 7. Scripts: --json lines, no carriage returns on a pipe, results on stdout. -----------------------------------


def test_json_lines_and_no_carriage_returns(server: ServerThread, images: tuple[Path, Path], tmp_path: Path) -> None:
    done = _styletx("stylize", *map(str, images), "-o", str(tmp_path / "j.png"), "--server", server.target,
                    *FLAGS, "--json")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "accepted" and "progress" in kinds and kinds[-1] == "result"
    assert events[-1]["output"] == str(tmp_path / "j.png") and events[-1]["width"] == 64
    plain = _styletx("stylize", *map(str, images), "-o", str(tmp_path / "p.png"), "--server", server.target, *FLAGS)
    assert plain.returncode == 0 and "\r" not in plain.stderr and "iteration" in plain.stderr
    assert plain.stdout.startswith(str(tmp_path / "p.png"))  # the result on stdout, progress on stderr


def test_preview_dir_alone_writes_previews(server: ServerThread, images: tuple[Path, Path], tmp_path: Path) -> None:
    code = cli.main(["stylize", *map(str, images), "-o", str(tmp_path / "o.png"), "--server", server.target,
                     "-q", "--size", "64", "--min-size", "64", "--iterations", "20", "--preview-dir",
                     str(tmp_path / "previews")])
    assert code == 0 and len(list((tmp_path / "previews").iterdir())) == 2  # every 10 iterations


# 4. Ctrl-C: the job is cancelled, one line says where, exit 130. ----------------------------------------------


def _interrupt(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """Start the CLI with --json, send SIGINT after its first progress event; its status and stderr."""
    process = subprocess.Popen([*STYLETX, *args, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=ROOT, env={**os.environ, **(env or {})})
    assert process.stdout is not None
    for line in process.stdout:
        if json.loads(line)["event"] == "progress":
            process.send_signal(signal.SIGINT)
            break
    _, err = process.communicate(timeout=120)
    return process.returncode, err


def test_ctrl_c_cancels_a_remote_job(images: tuple[Path, Path], tmp_path: Path) -> None:
    engine = FakeEngine(step_seconds=0.05)
    thread = ServerThread(lambda device: engine, workers=1)
    try:
        code, err = _interrupt(["stylize", *map(str, images), "-o", str(tmp_path / "r.png"), "--server",
                                thread.target, "--size", "64", "--min-size", "64", "--iterations", "400"])
    finally:
        thread.stop()
    assert code == 130, err
    assert err.strip().splitlines() == [err.strip()] and err.startswith("styletx: cancelled at iteration ")
    assert "of 400" in err and engine.cancelled == 1 and not (tmp_path / "r.png").exists()


@pytest.mark.slow
def test_ctrl_c_cancels_a_local_job(images: tuple[Path, Path], tmp_path: Path) -> None:
    """The real engine in the CLI's process (torch threads and all): no abort, no traceback."""
    from styletx_core.artifacts import cache_dir

    require_tool((cache_dir() / "vgg19-offline.safetensors").exists(),
                 "VGG19 weights not prepared: run `styletx weights fetch`")
    code, err = _interrupt(["stylize", *map(str, images), "-o", str(tmp_path / "l.png"), "--size", "64",
                            "--min-size", "64", "--iterations", "300", "--optimizer", "adam"],
                           env={"STYLETX_SERVER": ""})
    assert code == 130, err
    assert err.strip().splitlines()[-1].startswith("styletx: cancelled at iteration ") and "of 300" in err
    assert "Traceback" not in err and "terminate called" not in err


# 6. Help, version, completion. -----------------------------------------------------


def test_help_shows_proto_text_defaults_and_choices(capsys: pytest.CaptureFixture[str]) -> None:
    """(That ``--help`` imports no torch is tests/test_layout.py's.)"""
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    listing = capsys.readouterr().out
    assert "fast" in listing and "export-onnx" in listing and "completion" in listing
    with pytest.raises(SystemExit):
        cli.main(["stylize", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Long side of the output image in pixels. (default: 512)" in text
    assert "{lbfgs,adam}" in text and "{max,avg}" in text and "{optimize,fast,preset,hybrid,cyclegan}" in text
    assert "--size INT size" not in text and "--token" in text and "--json" in text
    with pytest.raises(SystemExit):
        cli.main(["health", "--help"])
    assert "required" in capsys.readouterr().out


def test_version_and_completion(capsys: pytest.CaptureFixture[str]) -> None:
    import styletx_client

    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.strip() == f"styletx {styletx_client.__version__}"
    assert cli.main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert "stylize" in script and "--style-weights" in script and "fast" in script


# 11. One name per concept. ------------------------------------------------------------------------------------


def test_style_weights_everywhere_and_old_names_warn(capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in ("stylize", "fast", "video"):
        assert "--style-weights" in commands[name].format_help(), name
        assert "--weights " not in commands[name].format_help(), name
    for name in ("score", "export-onnx"):
        assert "--vgg-weights" in commands[name].format_help(), name
    args = parser.parse_args(["fast", "a.png", "b.png", "c.png", "-o", "x.png", "--weights", "2", "1"])
    assert args.style_weights == [2.0, 1.0]
    assert capsys.readouterr().err.strip() == "styletx: warning: --weights is deprecated; use --style-weights"


def test_size_limit_is_the_servers_and_bad_images_say_so_plainly(
    images: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    thread = ServerThread(lambda device: FakeEngine(step_seconds=0), max_size=256)
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    try:
        options = ["-o", str(tmp_path / "x.png"), "--server", thread.target, "-q"]
        assert cli.main(["stylize", *map(str, images), *options, "--size", "99999"]) == 2
        assert capsys.readouterr().err == "styletx: error: params.size: 99999 exceeds this server's limit 256\n"
        assert cli.main(["stylize", str(images[0]), str(tmp_path / "bad.jpg"), *options, "--size", "64"]) == 2
        err = capsys.readouterr().err
    finally:
        thread.stop()
    assert err.startswith("styletx: error: styles[0].image: not a readable image") and "BytesIO" not in err


@pytest.mark.slow
def test_type_checkers_catch_misspelt_and_mistyped_options(tmp_path: Path) -> None:
    """What an editor sees: mypy flags ``sise=``, a string size and an unknown optimizer; the valid call passes."""
    from mypy import api

    snippet = (
        "from styletx_client import Client\n"
        "with Client() as c:\n"
        "    c.stylize('a.png', 'b.png', sise=64)\n"
        "    c.stylize('a.png', 'b.png', size='64')\n"
        "    c.stylize('a.png', 'b.png', optimizer='sgd')\n"
        "    c.stylize('a.png', ['b.png', ('c.png', 0.5)], size=64, optimizer='adam', strength=0.5, tile=256)\n"
    )
    os.environ.setdefault("MYPYPATH", str(ROOT / "client"))
    out, _, _ = api.run(["--ignore-missing-imports", "--cache-dir", str(tmp_path), "-c", snippet])
    errors = [line for line in out.splitlines() if line.startswith("<string>") and ": error:" in line]
    assert [line.split(":")[1] for line in errors] == ["3", "4", "5"], out
    assert 'Unexpected keyword argument "sise"' in errors[0] and 'expected "int"' in errors[1]
    assert "Literal['lbfgs', 'adam']" in errors[2]
