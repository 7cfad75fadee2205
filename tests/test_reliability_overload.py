"""Overload: 50 concurrent clients on loopback against a one-worker server with a queue of 4.

Every call must complete or be refused with RESOURCE_EXHAUSTED (with a retry hint) — none hangs, none ends
any other way — and the server's resident memory must come back near where it started. The server is a
subprocess (the fake engine, real validation), so its RSS is its own. Figures go to
``overload.json`` in the ``results_dir`` fixture (build/test-results); ``bench/soak.py`` reuses :func:`drive` and :func:`rss_bytes`.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from support.process import start_server
from traffic import drive, load_request, rss_bytes

CLIENTS = 50
CALLS_PER_CLIENT = 4
QUEUE = 4


@pytest.mark.slow
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
