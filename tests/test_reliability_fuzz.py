"""Fuzzing the service: over a thousand malformed or hostile requests from a seeded generator.

The validation path is the real one (decoding included); valid requests run on the fake engine, so the
whole corpus takes seconds. Every hostile request must end with INVALID_ARGUMENT or RESOURCE_EXHAUSTED and
a message that names the problem (the request field, or the size limit), within a bounded time; requests
that are odd but legal (palette, CMYK, 16-bit, animated, 1×N images; mutations a decoder may tolerate) may
also succeed, but never end INTERNAL/UNKNOWN or hang. The server then still completes a valid job.

Outcome counts go to stdout and ``fuzz.json`` in the ``results_dir`` fixture (build/test-results). The corpus itself is ``bench/traffic.py``'s (``bench/soak.py`` sends it too).
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from styletx_proto.v1 import styletx_pb2 as pb
from styletx_proto.v1 import styletx_pb2_grpc as pb_grpc
from support.fake import FakeEngine, ServerThread
from traffic import BOUND_SECONDS, CALL_TIMEOUT, LIMITS, SEED, Case, base_request, corpus, percentile

# ------------------------------------------------------------------------------------------------ test


@dataclass
class Outcome:
    code: str
    message: str
    seconds: float


def send(stub: pb_grpc.StyleTransferStub, request: pb.StylizeRequest, timeout: float = CALL_TIMEOUT) -> Outcome:
    """Run one call to its end: OK when it completes, else the status name and message."""
    start = time.monotonic()
    try:
        events = list(stub.Stylize(request, timeout=timeout))
    except grpc.RpcError as error:
        return Outcome(error.code().name, error.details() or "", time.monotonic() - start)
    ok = bool(events) and events[-1].WhichOneof("event") == "completed"
    return Outcome("OK" if ok else "NO_COMPLETED", "", time.monotonic() - start)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    engine = FakeEngine(step_seconds=0)
    thread = ServerThread(lambda device: engine, workers=1, queue_size=8, **LIMITS)
    yield thread
    thread.stop()


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the corrupt EXIF it is fed
@pytest.mark.slow
def test_fuzz_corpus_is_refused_by_name_and_the_server_keeps_working(server: ServerThread, results_dir: Path) -> None:
    cases = corpus()
    assert len(cases) >= 1000
    rng = random.Random(SEED + 1)
    failures: list[str] = []
    outcomes: dict[str, Counter[str]] = {}
    seconds: list[float] = []
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.StyleTransferStub(channel)
        for index, case in enumerate(cases):
            outcome = send(stub, case.request)
            seconds.append(outcome.seconds)
            outcomes.setdefault(case.category.split("/")[0], Counter())[outcome.code] += 1
            if outcome.code not in case.allowed or (outcome.code != "OK" and case.needle not in outcome.message):
                failures.append(f"#{index} {case.category}: {outcome.code} {outcome.message[:200]!r} "
                                f"(allowed {sorted(case.allowed)}, needle {case.needle!r})")
            if outcome.seconds > BOUND_SECONDS:
                failures.append(f"#{index} {case.category}: took {outcome.seconds:.1f}s")
            if index % 250 == 249:  # the server still does real work in between
                assert send(stub, base_request(rng)).code == "OK", f"valid job failed after case {index}"
        final = send(stub, base_request(rng))
    report = _report(cases, outcomes, seconds)
    (results_dir / "fuzz.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["by_outcome"]), json.dumps(report["latency_ms"]))
    assert not failures, f"{len(failures)} of {len(cases)} cases misbehaved:\n" + "\n".join(failures[:30])
    assert final.code == "OK", final


def _report(cases: list[Case], outcomes: dict[str, Counter[str]], seconds: list[float]) -> dict[str, Any]:
    total: Counter[str] = Counter()
    for counts in outcomes.values():
        total.update(counts)
    return {
        "seed": SEED, "cases": len(cases), "server_limits": LIMITS,
        "by_outcome": dict(total), "by_category": {k: dict(v) for k, v in sorted(outcomes.items())},
        "latency_ms": {"p50": round(percentile(seconds, 0.5) * 1000, 2),
                       "p99": round(percentile(seconds, 0.99) * 1000, 2),
                       "max": round(max(seconds) * 1000, 2)},
        "machine": "2 shared CPU cores, fake engine (0 s per step), validation and decoding real",
    }


def test_corpus_is_deterministic() -> None:
    first, second = corpus(images=50), corpus(images=50)
    assert [c.request.SerializeToString() for c in first] == [c.request.SerializeToString() for c in second]
