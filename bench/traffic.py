"""Service traffic for the reliability tests and bench/soak.py: a seeded corpus of malformed or hostile
requests, valid load requests, one call run to its end, concurrent clients, percentiles and a process's RSS.

It lives in bench/ (the tools that measure the service) and the tests import it from here (``pythonpath`` in
pyproject.toml), so bench never imports a test module.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from PIL import Image
from styletx_proto.v1 import styletx_pb2 as pb
from styletx_proto.v1 import styletx_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]


def encode(image: Image.Image, fmt: str, **save: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


SEED = 20240917
#: The fuzzed server's limits: small, so that limit violations are cheap to provoke.
LIMITS = {"max_pixels": 100_000, "max_size": 256, "max_styles": 3, "max_receive_mb": 1}
REJECT = frozenset({"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"})
TOLERATE = REJECT | {"OK"}
CALL_TIMEOUT = 20.0
"""Deadline of each fuzz call; DEADLINE_EXCEEDED is a failure (a hang)."""
BOUND_SECONDS = 5.0
"""Slowest allowed answer to a hostile request (generous: the machine is shared)."""


@dataclass(frozen=True)
class Case:
    """One request and what may come back: ``allowed`` status names, and ``needle``, a text every error
    message must contain (the field at fault, or the limit)."""

    category: str
    request: pb.StylizeRequest
    needle: str
    allowed: frozenset[str] = REJECT


# ---------------------------------------------------------------------------------------------- images


def _noise(rng: random.Random, size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    image = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    return image if mode == "RGB" else image.convert(mode)


def valid_images(rng: random.Random) -> list[tuple[str, bytes]]:
    """Small images in every container the decoder knows, to truncate and corrupt."""
    image = _noise(rng, (48, 40))
    return [("png", encode(image, "PNG")), ("jpeg", encode(image, "JPEG", quality=80)),
            ("gif", encode(image.convert("P"), "GIF")), ("bmp", encode(image, "BMP")),
            ("tiff", encode(image, "TIFF", compression="tiff_deflate")), ("webp", encode(image, "WEBP")),
            ("ppm", encode(image, "PPM"))]


def exotic_images(rng: random.Random) -> list[tuple[str, bytes]]:
    """Legal but unusual inputs: every one must be converted (or refused by name), never crash."""
    base = _noise(rng, (40, 32))
    frames = [_noise(rng, (24, 24)) for _ in range(3)]
    sixteen = Image.frombytes("I;16", (32, 24), rng.randbytes(32 * 24 * 2))
    transparent = base.convert("P")
    transparent.info["transparency"] = 0
    return [
        ("palette", encode(base.convert("P"), "PNG")),
        ("palette-transparent", encode(transparent, "PNG")),
        ("cmyk-jpeg", encode(base.convert("CMYK"), "JPEG")),
        ("cmyk-tiff", encode(base.convert("CMYK"), "TIFF")),
        ("gray16-png", encode(sixteen, "PNG")),
        ("gray-alpha", encode(base.convert("LA"), "PNG")),
        ("rgba", encode(base.convert("RGBA"), "PNG")),
        ("bilevel", encode(base.convert("1"), "PNG")),
        ("float-tiff", encode(base.convert("F"), "TIFF")),
        ("int32-tiff", encode(base.convert("I"), "TIFF")),
        ("animated-gif", encode(frames[0].convert("P"), "GIF", save_all=True,
                                append_images=[f.convert("P") for f in frames[1:]])),
        ("animated-png", encode(frames[0], "PNG", save_all=True, append_images=frames[1:])),
        ("animated-webp", encode(frames[0], "WEBP", save_all=True, append_images=frames[1:])),
        ("1x1", encode(_noise(rng, (1, 1)), "PNG")),
        ("1xN", encode(_noise(rng, (1, 300)), "PNG")),
        ("Nx1", encode(_noise(rng, (300, 1)), "PNG")),
        ("2x2-jpeg", encode(_noise(rng, (2, 2)), "JPEG")),
    ]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int, *, idat: bytes = b"") -> bytes:
    """A PNG whose header declares ``width``×``height`` (CRCs correct, so only the size is hostile)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat or zlib.compress(b"\0"))
            + _png_chunk(b"IEND", b""))


def bombs(rng: random.Random) -> list[tuple[str, bytes]]:
    """Files declaring far more pixels than they carry (and one zlib bomb that really inflates)."""
    out: list[tuple[str, bytes]] = []
    for _ in range(6):
        width, height = rng.randint(5_000, 2**31 - 1), rng.randint(5_000, 2**31 - 1)
        out.append(("png-huge", png_header(width, height)))
    out.append(("png-zlib-bomb", png_header(20_000, 20_000, idat=zlib.compress(bytes(20_001 * 3 * 64), 9))))
    gif = bytearray(encode(_noise(rng, (8, 8)).convert("P"), "GIF"))
    gif[6:10] = struct.pack("<HH", 65535, 65535)
    out.append(("gif-huge", bytes(gif)))
    bmp = bytearray(encode(_noise(rng, (8, 8)), "BMP"))
    bmp[18:26] = struct.pack("<ii", 1_000_000, 1_000_000)
    out.append(("bmp-huge", bytes(bmp)))
    out.append(("ppm-huge", b"P6\n100000 100000\n255\n" + bytes(64)))
    jpeg = bytearray(encode(_noise(rng, (8, 8)), "JPEG"))
    sof = jpeg.find(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", 65000, 65000)
    out.append(("jpeg-huge", bytes(jpeg)))
    out.append(("tiff-huge", _tiff_header(200_000, 200_000)))
    return out


def _tiff_header(width: int, height: int) -> bytes:
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8), (277, 3, 1, 1), (279, 4, 1, 16)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", tag, kind, count, value) for tag, kind, count, value in entries) + bytes(4)
    return b"II*\0" + struct.pack("<I", 24) + bytes(16) + ifd


def zero_pixel(rng: random.Random) -> list[tuple[str, bytes]]:
    return [("png-0x0", png_header(0, 0)), ("png-0xN", png_header(0, rng.randint(1, 100))),
            ("png-Nx0", png_header(rng.randint(1, 100), 0)), ("ppm-0x0", b"P6\n0 0\n255\n")]


def garbage(rng: random.Random) -> bytes:
    """Random bytes, sometimes behind a real file signature so the decoder gets further."""
    magic = rng.choice([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\0", b"RIFF",
                        b"P6\n", b"<svg xmlns='http://www.w3.org/2000/svg'>", b"%PDF-1.7\n", b"PK\x03\x04"])
    return magic + rng.randbytes(rng.randint(0 if magic else 1, 2048))


# -------------------------------------------------------------------------------------------- requests


def _png(rng: random.Random, size: tuple[int, int] = (40, 30)) -> bytes:
    return encode(_noise(rng, size), "PNG")


def base_request(rng: random.Random, styles: int = 1) -> pb.StylizeRequest:
    """A valid, cheap request (one iteration on the fake engine)."""
    return pb.StylizeRequest(content=_png(rng), styles=[pb.Style(image=_png(rng, (24, 24))) for _ in range(styles)],
                             params=pb.StylizeParams(size=64, min_size=32, iterations=1, coarse_iterations=0))


def _with_image(rng: random.Random, data: bytes) -> tuple[pb.StylizeRequest, str]:
    """``data`` as the content or as one of the style images; returns the request and the field name."""
    request = base_request(rng, styles=rng.randint(1, 3))
    slot = rng.randrange(len(request.styles) + 1)
    if slot == 0:
        request.content = data
        return request, "content"
    request.styles[slot - 1].image = data
    return request, f"styles[{slot - 1}].image"


_DOUBLES = ("scale_step", "learning_rate", "ema_decay", "content_weight", "style_weight", "tv_weight",
            "style_scale", "variation_strength", "style_energy_power", "style_tolerance")
_ENUMS = ("optimizer", "init", "model", "pooling", "style_loss", "preserve_color", "precision")
_BAD_DOUBLES = (math.nan, math.inf, -math.inf, -1.0, -1e-300, 1e300)
_BAD_UINTS = {"size": (0, 1, 15, 8193, 2**32 - 1), "min_size": (1, 15, 8193, 2**32 - 1),
              "iterations": (0, 10001, 2**32 - 1), "coarse_iterations": (10001, 2**32 - 1),
              "preview_every": (10001, 2**32 - 1)}
_BAD_LAYERS = ("relu9_9", "conv1_1", "", "../../etc/passwd", "/dev/zero", "relu1_1\0", "x" * 5000, "RELU1_1")


def number_cases(rng: random.Random) -> Iterator[Case]:
    for name in _DOUBLES:
        for value in _BAD_DOUBLES:
            request = base_request(rng)
            setattr(request.params, name, value)
            yield Case("number", request, f"params.{name}")
    for name, values in _BAD_UINTS.items():
        for value in values:
            request = base_request(rng)
            setattr(request.params, name, value)
            yield Case("range", request, f"params.{name}")
    for value in (257, 1024, 8192):  # legal for the engine, above this server's max_size
        request = base_request(rng)
        request.params.size = value
        yield Case("range", request, "params.size")
    for value in (2**63, 2**64 - 1):
        request = base_request(rng)
        request.params.seed = value
        yield Case("number", request, "params.seed")
    for value in (math.nan, math.inf, -1.0, -math.inf):
        request = base_request(rng, styles=2)
        request.styles[1].weight = value
        yield Case("number", request, "styles[1].weight")
    request = base_request(rng, styles=2)
    request.styles[0].weight = request.styles[1].weight = 0.0
    yield Case("number", request, "styles[].weight")
    for weights in ([math.nan] * 5, [-1.0] * 5, [0.0] * 5, [1.0] * 4, [1.0] * 6, [math.inf, 1, 1, 1, 1]):
        request = base_request(rng)
        request.params.style_layer_weights.extend(weights)
        yield Case("number", request, "params.style_layer_weights")


def enum_cases(rng: random.Random) -> Iterator[Case]:
    raw = (8, 9, 99, 2**31 - 1, -1, -(2**31))  # above every enum of StylizeParams
    for name in _ENUMS:
        for value in raw:
            request = base_request(rng)
            setattr(request.params, name, value)
            yield Case("enum", request, f"params.{name}")
    for value in (4, 99, -1, 2**31 - 1):
        request = base_request(rng)
        request.output_format = value  # type: ignore[assignment]  # an unknown raw number
        yield Case("enum", request, "output_format")
        request = base_request(rng)
        request.preview.format = value  # type: ignore[assignment]
        yield Case("enum", request, "preview.format")
    for value in (99, -5, 2**31 - 1):
        request = base_request(rng)
        request.mode = value  # type: ignore[assignment]
        yield Case("enum", request, "mode")


def layer_cases(rng: random.Random) -> Iterator[Case]:
    for layer in _BAD_LAYERS:
        for name in ("content_layers", "style_layers"):
            request = base_request(rng)
            getattr(request.params, name).append(layer)
            yield Case("layers", request, f"params.{name}")


def style_count_cases(rng: random.Random) -> Iterator[Case]:
    for _ in range(4):
        request = base_request(rng)
        del request.styles[:]
        yield Case("styles", request, "styles")
    for extra in range(1, 6):
        yield Case("styles", base_request(rng, styles=LIMITS["max_styles"] + extra), "styles")
    for _ in range(3):
        request = base_request(rng, styles=2)
        request.styles[1].image = b""
        yield Case("styles", request, "styles[1].image")
        request = base_request(rng)
        request.content = b""
        yield Case("styles", request, "content")


def oversized_cases(rng: random.Random) -> Iterator[Case]:
    """Requests above the 1 MiB receive limit: refused by gRPC itself before any parsing."""
    limit = LIMITS["max_receive_mb"] << 20
    for index in range(8):
        request = base_request(rng)
        if index % 2:
            request.content = rng.randbytes(limit + rng.randint(1, limit))
        else:
            for style in request.styles:
                style.image = rng.randbytes(limit // 2)
            request.styles.add(image=rng.randbytes(limit // 2 + 1))
        yield Case("oversized", request, "larger than max")
    request = base_request(rng)
    request.model_name = "m" * (limit + 10)
    yield Case("oversized", request, "larger than max")


def image_cases(rng: random.Random, count: int) -> Iterator[Case]:
    """``count`` hostile images: truncations, garbage, corruptions, bombs, zero pixels; plus exotic inputs."""
    originals = valid_images(rng)
    for name, data in bombs(rng):
        request, field = _with_image(rng, data)
        yield Case(f"bomb/{name}", request, field)
    for _name, data in zero_pixel(rng):
        request, field = _with_image(rng, data)
        yield Case("zero-pixel", request, field)
    for name, data in exotic_images(rng):
        for _ in range(2):
            request, field = _with_image(rng, data)
            yield Case(f"exotic/{name}", request, field, TOLERATE)
    for _ in range(count):
        fmt, data = rng.choice(originals)
        roll = rng.random()
        if roll < 0.4:  # cut well inside the pixel data: nothing can decode that
            request, field = _with_image(rng, data[:rng.randint(1, int(len(data) * 0.6))])
            yield Case(f"truncated/{fmt}", request, field)
        elif roll < 0.55:  # cut near the end: some decoders tolerate a missing trailer
            request, field = _with_image(rng, data[:rng.randint(int(len(data) * 0.6), len(data) - 1)])
            yield Case(f"truncated-tail/{fmt}", request, field, TOLERATE)
        elif roll < 0.8:
            request, field = _with_image(rng, garbage(rng))
            yield Case("garbage", request, field)
        else:  # flipped bytes: a decoder without checksums may still produce an image
            corrupt = bytearray(data)
            for _ in range(rng.randint(1, 16)):
                corrupt[rng.randrange(len(corrupt))] = rng.randrange(256)
            request, field = _with_image(rng, bytes(corrupt))
            yield Case(f"corrupt/{fmt}", request, field, TOLERATE)


def corpus(seed: int = SEED, images: int = 820) -> list[Case]:
    """The whole fuzz corpus, deterministic for a given ``seed``."""
    rng = random.Random(seed)
    generators: list[Callable[[random.Random], Iterator[Case]]] = [
        number_cases, enum_cases, layer_cases, style_count_cases, oversized_cases]
    cases = [case for generate in generators for case in generate(rng)]
    cases += image_cases(rng, images)
    return cases


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] if ordered else 0.0


# ------------------------------------------------------------------------------------------------ load

LOAD_CALL_TIMEOUT = 60.0


@dataclass
class CallResult:
    """One call as the load driver saw it."""

    code: str
    seconds: float
    queue_seconds: float | None = None
    retry_after_ms: int | None = None
    message: str = ""


@dataclass
class LoadReport:
    results: list[CallResult] = field(default_factory=list)
    hung: int = 0
    wall_seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        waits = [r.queue_seconds for r in self.results if r.queue_seconds is not None]
        latencies = [r.seconds for r in self.results]
        return {
            "calls": len(self.results), "hung": self.hung, "by_outcome": dict(Counter(r.code for r in self.results)),
            "queue_wait_ms": {"p50": round(percentile(waits, 0.5) * 1000, 1),
                              "p99": round(percentile(waits, 0.99) * 1000, 1),
                              "max": round(max(waits, default=0) * 1000, 1)},
            "latency_ms": {"p50": round(percentile(latencies, 0.5) * 1000, 1),
                           "p99": round(percentile(latencies, 0.99) * 1000, 1)},
            "wall_seconds": round(self.wall_seconds, 2),
        }


def one_call(stub: pb_grpc.StyleTransferStub, request: pb.StylizeRequest, timeout: float) -> CallResult:
    """Run a call to its end, noting the queue wait the server reports in Started."""
    start = time.monotonic()
    queue_seconds = None
    try:
        for event in stub.Stylize(request, timeout=timeout):
            if event.WhichOneof("event") == "started":
                queue_seconds = event.started.queue_seconds
            last = event.WhichOneof("event")
        code = "OK" if last == "completed" else "NO_COMPLETED"
        return CallResult(code, time.monotonic() - start, queue_seconds)
    except grpc.RpcError as error:
        hint = dict(error.trailing_metadata() or ()).get("retry-after-ms")
        return CallResult(error.code().name, time.monotonic() - start, queue_seconds,
                          int(hint) if hint else None, error.details() or "")


def drive(target: str, clients: int, calls: int, make_request: Callable[[random.Random], pb.StylizeRequest],
          *, timeout: float = LOAD_CALL_TIMEOUT, seed: int = 0, stop: threading.Event | None = None) -> LoadReport:
    """``clients`` threads, each on its own connection, each making ``calls`` calls back to back (or until
    ``stop``); a thread still running ``timeout`` + 30 s after the start counts as hung."""
    report = LoadReport()
    lock = threading.Lock()

    def client(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(target, options) as channel:
            stub = pb_grpc.StyleTransferStub(channel)
            for _ in range(calls):
                if stop is not None and stop.is_set():
                    return
                result = one_call(stub, make_request(rng), timeout)
                with lock:
                    report.results.append(result)

    start = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, start + timeout * calls + 30 - time.monotonic()))
    report.hung = sum(thread.is_alive() for thread in threads)
    report.wall_seconds = time.monotonic() - start
    return report


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def noisy_png(rng: random.Random, size: tuple[int, int]) -> bytes:
    from PIL import Image

    return encode(Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3)), "PNG")


def load_request(rng: random.Random) -> pb.StylizeRequest:
    """A valid job with a 192×160 noise content (≈ 90 KiB, so requests weigh on memory) and 3 iterations."""
    return pb.StylizeRequest(content=noisy_png(rng, (192, 160)), styles=[pb.Style(image=noisy_png(rng, (32, 32)))],
                             params=pb.StylizeParams(size=64, min_size=64, iterations=3, coarse_iterations=0))


def start_server(
    *extra: str, env: dict[str, str] | None = None, pythonpath: Sequence[Path] = ()
) -> tuple[subprocess.Popen[str], int, list[Any]]:
    """Start ``python -m styletx_server`` on 127.0.0.1 with any free ports and ``extra`` flags (an
    ``--engine-factory`` found on ``pythonpath``); returns the process, its port and its parsed log."""
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(map(str, [*pythonpath, ROOT])),
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


class TcpProxy:
    """Forwards ``127.0.0.1:port`` → ``target``; ``cut_after`` bytes server→client end a connection (both
    sockets closed, once: later connections pass untouched); :meth:`freeze` stops all forwarding."""

    def __init__(self, target: str, cut_after: int | None = None) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self.cut_after = cut_after
        self.cuts = 0
        self._frozen = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.target = f"127.0.0.1:{self.port}"
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def freeze(self) -> None:
        self._frozen.set()

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target)
            self._sockets += [client, server]
            budget = self.cut_after if self.cuts == 0 else None
            threading.Thread(target=self._pipe, args=(client, server, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, budget), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, budget: int | None) -> None:
        sent = 0
        try:
            while data := source.recv(65536):
                if self._frozen.is_set():
                    self._frozen.wait()
                    while True:  # swallow everything, answer nothing
                        if not source.recv(65536):
                            return
                if budget is not None and sent + len(data) >= budget:
                    sink.sendall(data[:budget - sent])
                    self.cuts += 1
                    break
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
