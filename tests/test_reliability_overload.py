"""Overload: 50 concurrent clients on loopback against a one-worker server with a queue of 4.

Every call must complete or be refused with RESOURCE_EXHAUSTED (with a retry hint) — none hangs, none ends
any other way — and the server's resident memory must come back near where it started. The server is a
subprocess (the fake engine, real validation), so its RSS is its own. Figures go to
``overload.json`` in the ``results_dir`` fixture (build/test-results); ``bench/soak.py`` reuses :func:`drive` and :func:`rss_bytes`.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from styletx_proto.v1 import styletx_pb2 as pb
from styletx_proto.v1 import styletx_pb2_grpc as pb_grpc
from support.process import start_server
from support.requests import encode
from test_reliability_fuzz import percentile

CLIENTS = 50
CALLS_PER_CLIENT = 4
QUEUE = 4
CALL_TIMEOUT = 60.0


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
          *, timeout: float = CALL_TIMEOUT, seed: int = 0, stop: threading.Event | None = None) -> LoadReport:
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


def test_overload_completes_or_refuses_every_call_and_memory_returns(results_dir: Path) -> None:
    process, port, _ = start_server("--workers", "1", "--queue-size", str(QUEUE),
                                    env={"STYLETX_FAKE_STEP": "0.005"})
    target = f"127.0.0.1:{port}"
    try:
        warm = drive(target, 2, 5, load_request, seed=99)  # allocator pools, caches, first-call costs
        assert {r.code for r in warm.results} == {"OK"}, warm.summary()
        time.sleep(0.5)
        baseline = rss_bytes(process.pid)
        peak = baseline
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.05):
                peak = max(peak, rss_bytes(process.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        report = drive(target, CLIENTS, CALLS_PER_CLIENT, load_request, seed=1)
        done.set()
        sampler.join()
        time.sleep(1.0)  # let the last streams close
        after = rss_bytes(process.pid)
        again = drive(target, 1, 1, load_request, seed=7)  # still serving
    finally:
        process.terminate()
        process.wait(30)
    summary = report.summary()
    summary.update(clients=CLIENTS, calls_per_client=CALLS_PER_CLIENT, queue_capacity=QUEUE, workers=1,
                   rss_mib={"baseline": round(baseline / 2**20, 1), "peak": round(peak / 2**20, 1),
                            "after": round(after / 2**20, 1)},
                   machine="2 shared CPU cores, subprocess server, fake engine 5 ms/step, 3 steps per job")
    (results_dir / "overload.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    assert report.hung == 0 and len(report.results) == CLIENTS * CALLS_PER_CLIENT, summary
    assert set(summary["by_outcome"]) <= {"OK", "RESOURCE_EXHAUSTED"}, summary
    refused = [r for r in report.results if r.code == "RESOURCE_EXHAUSTED"]
    assert refused and summary["by_outcome"].get("OK", 0) >= QUEUE, summary  # it was overloaded, and worked
    assert all(r.retry_after_ms and "queue is full" in r.message for r in refused)
    assert after - baseline < max(48 * 2**20, 0.25 * baseline), summary["rss_mib"]
    assert again.results[0].code == "OK"
