"""Soak: minutes of mixed valid and hostile traffic against a ``styletx-server`` subprocess, memory sampled.

    python bench/soak.py --minutes 10 --clients 8 --invalid 0.5            # fake engine (default)
    python bench/soak.py --minutes 30 --engine real --size 128 --clients 2  # the real engine

Each client thread loops: with probability ``--invalid`` it sends a request from the fuzz corpus
(bench/traffic.py, the one the fuzz test sends), else a valid job. The server's RSS is sampled every second. At the end the
script prints and writes ``bench/results/soak.json`` (outcome counts, latency and queue-wait percentiles, RSS
at start / peak / end and its least-squares slope in MiB per minute over the second half) and exits 1 when
a call ended in a status the corpus does not allow, a call hung, or the server died.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]

import grpc  # noqa: E402
from styletx_proto.v1 import styletx_pb2 as pb  # noqa: E402
from styletx_proto.v1 import styletx_pb2_grpc as pb_grpc  # noqa: E402
from traffic import corpus, load_request, one_call, percentile, rss_bytes, start_server  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="how long to run")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--invalid", type=float, default=0.5, help="share of hostile requests")
    parser.add_argument("--engine", choices=("fake", "real"), default="fake",
                        help="fake: the tests' stand-in engine (validation real); real: StyleTransfer")
    parser.add_argument("--size", type=int, default=64, help="output long side of the valid jobs")
    parser.add_argument("--iterations", type=int, default=3, help="iterations of the valid jobs")
    parser.add_argument("--queue-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    return parser.parse_args(argv)


def valid_request(rng: random.Random, size: int, iterations: int) -> pb.StylizeRequest:
    request = load_request(rng)
    request.params.size = request.params.min_size = size
    request.params.iterations = iterations
    request.params.optimizer = pb.OPTIMIZER_ADAM
    return request


def slope_mib_per_minute(samples: list[tuple[float, int]]) -> float:
    """Least-squares RSS trend over the second half of the run (the first half includes warm-up)."""
    tail = samples[len(samples) // 2:]
    if len(tail) < 2:
        return 0.0
    mean_t = sum(t for t, _ in tail) / len(tail)
    mean_r = sum(r for _, r in tail) / len(tail)
    var = sum((t - mean_t) ** 2 for t, _ in tail) or 1.0
    return sum((t - mean_t) * (r - mean_r) for t, r in tail) / var * 60 / 2**20


def soak(args: argparse.Namespace) -> dict[str, Any]:
    extra = ["--workers", str(args.workers), "--queue-size", str(args.queue_size), "--max-pixels", "100000",
             "--max-size", "256", "--max-styles", "3", "--max-receive-mb", "1"]
    # fake: the tests' stand-in engine, imported by the server subprocess (bench itself imports no test code);
    # real: the default factory, styletx_core.engine.StyleTransfer.
    factory = "" if args.engine == "real" else "support.fake:make_engine"
    process, port, _ = start_server(*extra, "--engine-factory", factory, env={"STYLETX_FAKE_STEP": "0.005"},
                                    pythonpath=[ROOT / "tests"])
    target = f"127.0.0.1:{port}"
    cases = corpus(args.seed)
    stop = threading.Event()
    lock = threading.Lock()
    outcomes: Counter[str] = Counter()
    unexpected: list[str] = []
    latencies: list[float] = []
    waits: list[float] = []
    samples: list[tuple[float, int]] = []
    start = time.monotonic()

    def client(index: int) -> None:
        rng = random.Random(args.seed * 1000 + index)
        with grpc.insecure_channel(target, [("grpc.use_local_subchannel_pool", 1)]) as channel:
            stub = pb_grpc.StyleTransferStub(channel)
            while not stop.is_set():
                hostile = rng.random() < args.invalid
                case = rng.choice(cases) if hostile else None
                request = case.request if case else valid_request(rng, args.size, args.iterations)
                result = one_call(stub, request, timeout=600)
                allowed = case.allowed if case else {"OK", "RESOURCE_EXHAUSTED"}
                with lock:
                    outcomes[f"{'hostile' if hostile else 'valid'}:{result.code}"] += 1
                    latencies.append(result.seconds)
                    if result.queue_seconds is not None:
                        waits.append(result.queue_seconds)
                    if result.code not in allowed or (case and result.code != "OK"
                                                      and case.needle not in result.message):
                        unexpected.append(f"{case.category if case else 'valid'}: {result.code} {result.message}")

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
    try:
        for thread in threads:
            thread.start()
        while time.monotonic() - start < args.minutes * 60 and process.poll() is None:
            samples.append((time.monotonic() - start, rss_bytes(process.pid)))
            time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join(660)
        alive = process.poll() is None
        if alive:
            samples.append((time.monotonic() - start, rss_bytes(process.pid)))
    finally:
        process.terminate()
        process.wait(60)
    rss = [r for _, r in samples] or [0]
    return {
        "minutes": round((time.monotonic() - start) / 60, 2), "clients": args.clients, "engine": args.engine,
        "invalid_share": args.invalid, "calls": sum(outcomes.values()), "outcomes": dict(sorted(outcomes.items())),
        "unexpected": unexpected[:50], "unexpected_count": len(unexpected),
        "hung": sum(t.is_alive() for t in threads), "server_survived": alive,
        "latency_ms": {"p50": round(percentile(latencies, 0.5) * 1000, 1),
                       "p99": round(percentile(latencies, 0.99) * 1000, 1)},
        "queue_wait_ms": {"p50": round(percentile(waits, 0.5) * 1000, 1),
                          "p99": round(percentile(waits, 0.99) * 1000, 1)},
        "rss_mib": {"start": round(rss[0] / 2**20, 1), "peak": round(max(rss) / 2**20, 1),
                    "end": round(rss[-1] / 2**20, 1),
                    "slope_second_half_per_minute": round(slope_mib_per_minute(samples), 2)},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = soak(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    ok = not report["unexpected_count"] and not report["hung"] and report["server_survived"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
