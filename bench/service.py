"""Service overhead: the same job in-process vs through the gRPC server, and time to first event.

Goals (issue 5): ≤ 3 % overhead on a whole job; ≤ 50 ms to the first event on an idle server. The engine
runs on random VGG19 weights (the compute is the same as with real ones; no download). Writes
bench/results/service.json.

    .venv/bin/python bench/service.py [--size 128] [--iterations 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from random_vgg import write_random_vgg19  # noqa: E402  (bench/)
from styletx_client import Client  # noqa: E402
from styletx_server.app import StyletxServer  # noqa: E402
from styletx_server.config import ServerConfig  # noqa: E402

from styletx_core.engine import StyleTransfer  # noqa: E402
from styletx_core.options import StylizeOptions  # noqa: E402


def random_weights(path: Path) -> Path:
    """Random VGG19 weights at ``path``: the service's overhead does not depend on what the weights are."""
    return write_random_vgg19(path)


def images() -> tuple[bytes, bytes]:
    shared = ROOT.parent / "shared" / "images"
    content, style = shared / "content" / "tubingen.jpg", shared / "style" / "starry_night.jpg"
    if content.exists() and style.exists():
        return content.read_bytes(), style.read_bytes()
    encoded = []
    for sigma in (32, 96):
        buffer = io.BytesIO()
        Image.effect_noise((256, 192), sigma).convert("RGB").save(buffer, "PNG")
        encoded.append(buffer.getvalue())
    return encoded[0], encoded[1]


class Server:
    def __init__(self, engine: StyleTransfer) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        config = ServerConfig(host="127.0.0.1", port=0, metrics_port=0, devices="cpu", grace=0)

        async def start() -> StyletxServer:
            server = StyletxServer(config, lambda device: engine)
            await server.start()
            return server

        self.server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(120)
        self.target = f"127.0.0.1:{self.server.port}"

    def stop(self) -> None:
        async def stop() -> None:
            await self.server.stop(0)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)


def spread(values: list[float]) -> float:
    """Interquartile range over the median: how much the same job's time varies on this machine by itself."""
    q1, _, q3 = statistics.quantiles(values, n=4)
    return (q3 - q1) / statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--first-event-calls", type=int, default=20)
    args = parser.parse_args()
    from styletx_core.imageio import load_image

    content_bytes, style_bytes = images()
    params: dict[str, Any] = {
        "size": args.size,
        "min_size": args.size,
        "iterations": args.iterations,
        "coarse_iterations": 0,
        "seed": 1,
    }
    opts = StylizeOptions(**params)
    with tempfile.TemporaryDirectory() as tmp:
        weights = random_weights(Path(tmp) / "w.safetensors")
        engine = StyleTransfer(device="cpu", weights="file", weights_path=weights)
        server = Server(engine)
        content, style = load_image(content_bytes), load_image(style_bytes)
        engine.stylize(content, [style], opts)  # warm-up: networks built, targets cached, as on a live server
        direct, remote, phases = [], [], []
        with Client(server.target, timeout=600) as client:
            client.stylize(content_bytes, [style_bytes], **params)
            for repeat in range(args.repeats):  # ABBA order: drift in a shared machine's load hits both alike
                for where in (("direct", "remote") if repeat % 2 == 0 else ("remote", "direct")):
                    start = time.perf_counter()
                    if where == "direct":
                        engine.stylize(load_image(content_bytes), [load_image(style_bytes)], opts)
                        direct.append(time.perf_counter() - start)
                    else:
                        output = client.stylize(content_bytes, [style_bytes], **params)
                        remote.append(time.perf_counter() - start)
                        phases.append(dict(output.timings))
            first = []
            for _ in range(args.first_event_calls):
                start = time.perf_counter()
                stream = client.stylize_stream(content_bytes, [style_bytes], **params)
                next(iter(stream))
                first.append(time.perf_counter() - start)
                stream.cancel()
                time.sleep(0.2)  # let the cancelled job leave the worker: the server is idle again
        server.stop()
    d, r = statistics.median(direct), statistics.median(remote)
    # Completion-time quality scoring is a phase of its own: it runs after the client has the whole image.
    to_image = [wall - phase["score_seconds"] for wall, phase in zip(remote, phases, strict=True)]
    paired = [(t - x) / x for t, x in zip(to_image, direct, strict=True)]
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared with other jobs (noisy)",
        "job": {**params, "device": "cpu", "weights": "random vgg19"},
        "in_process_s": direct,
        "through_server_s": remote,
        "overhead_ratio": (r - d) / d,
        "through_server_to_image_s": to_image,
        "overhead_ratio_to_image": (statistics.median(to_image) - d) / d,
        "paired_overhead_ratios_to_image": paired,
        # The figure the goal is judged on: the median of the paired ratios (robust to the odd slow run), with
        # the interquartile range of the in-process runs alone as the machine's own noise for comparison.
        "paired_overhead_median": statistics.median(paired),
        "paired_overhead_mean": statistics.fmean(paired),
        "in_process_spread": spread(direct),
        "phases_median_s": {key: statistics.median(p[key] for p in phases) for key in phases[0]},
        "overhead_goal": 0.03,
        "first_event_ms_median": 1000 * statistics.median(first),
        "first_event_ms_p90": 1000 * sorted(first)[int(0.9 * (len(first) - 1))],
        "first_event_goal_ms": 50,
    }
    out = ROOT / "bench" / "results" / "service.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
