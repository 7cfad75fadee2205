"""Soak: minutes of mixed valid and hostile traffic against a ``styletx-server`` subprocess, memory sampled.

    python bench/soak.py --minutes 10 --clients 8 --invalid 0.5            # fake engine (default)
    python bench/soak.py --minutes 30 --engine real --size 128 --clients 2  # the real engine
    python bench/soak.py --minutes 10 --video 0.25 --kill 0.1 --cut 0.15    # issue 19's mix (the defaults)

Each client thread loops: with probability ``--invalid`` it sends a request from the fuzz corpus
(bench/traffic.py, the one the fuzz test sends), else valid work: a video stream (``--video``, fast mode, a
few 64 px frames read back in order) or an image job through the SDK (``styletx_client.Client``, which keys
it with a request_id). A share ``--kill`` of valid calls is a client that vanishes mid-stream (its channel
closed, no cancel), and a share ``--cut`` of image jobs goes through a TCP proxy that cuts the connection
after a random number of bytes, which the SDK must resume. Every SDK job must deliver its result exactly once,
from one server job: *lost* counts jobs that ended without a result for a reason other than a full server
(RESOURCE_EXHAUSTED), *duplicated* those whose events came from more than one job or carried a second
Completed or result chunk. The server's RSS is sampled every second. At the end the script prints and writes
``bench/results/soak.json`` (outcome counts, latency and queue-wait percentiles, RSS at start / peak / end
and its least-squares slope in MiB per minute over the second half) and exits 1 when a call ended in a status
the corpus does not allow, a call hung, a result was lost or duplicated, or the server died.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]

import grpc  # noqa: E402
from styletx_client import Client, StyletxError  # noqa: E402
from styletx_client._events import Completed, ResultChunk, collect  # noqa: E402
from styletx_proto.v1 import styletx_pb2 as pb  # noqa: E402
from styletx_proto.v1 import styletx_pb2_grpc as pb_grpc  # noqa: E402
from traffic import (  # noqa: E402
    TcpProxy,
    corpus,
    load_request,
    noisy_png,
    one_call,
    percentile,
    rss_bytes,
    start_server,
)


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
    parser.add_argument("--video", type=float, default=0.25, help="share of valid work that is a video stream")
    parser.add_argument("--kill", type=float, default=0.1, help="share of valid calls whose client vanishes")
    parser.add_argument("--cut", type=float, default=0.15,
                        help="share of image jobs whose connection a proxy cuts (the SDK resumes them)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    return parser.parse_args(argv)


def valid_request(rng: random.Random, size: int, iterations: int) -> pb.StylizeRequest:
    request = load_request(rng)
    request.params.size = request.params.min_size = size
    request.params.iterations = iterations
    request.params.optimizer = pb.OPTIMIZER_ADAM
    return request


@dataclass
class Tally:
    """What the client threads saw (under ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    outcomes: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    delivered: int = 0

    def add(self, outcome: str, seconds: float | None = None) -> None:
        with self.lock:
            self.outcomes[outcome] += 1
            if seconds is not None:
                self.latencies.append(seconds)


def sdk_job(target: str, request: pb.StylizeRequest, cut_after: int | None, tally: Tally) -> None:
    """One image job through the SDK (keyed), optionally through a proxy that cuts its connection."""
    proxy = TcpProxy(target, cut_after) if cut_after else None
    jobs: set[str] = set()
    counts: Counter[str] = Counter()

    def seen(event: Any) -> None:
        jobs.add(event.job_id)
        counts[type(event).__name__] += 1

    start = time.monotonic()
    label = "cut" if proxy else "sdk"
    try:
        with Client(proxy.target if proxy else target) as client:
            stream = client.stream_request(request, timeout=300)
            output = collect(stream, seen)
        resumed = stream._resume.resumed if stream._resume else 0
        tally.add(f"{label}:OK{'+resumed' if resumed else ''}", time.monotonic() - start)
        with tally.lock:
            tally.delivered += 1
            if len(jobs) != 1 or counts[Completed.__name__] != 1 or counts[ResultChunk.__name__] != \
                    -(-len(output.data) // (1024 * 1024)):
                tally.duplicated.append(f"{request.request_id}: jobs {sorted(jobs)}, events {dict(counts)}")
    except StyletxError as error:
        tally.add(f"{label}:{error.code.name}")
        if error.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
            with tally.lock:
                tally.lost.append(f"{label}: {error.code.name} {error.message}")
    finally:
        if proxy is not None:
            proxy.close()


def killed_job(target: str, request: pb.StylizeRequest, rng: random.Random, tally: Tally) -> None:
    """A client that vanishes after a few events: its channel is closed mid-stream, nothing is cancelled."""
    request.request_id = f"killed-{rng.getrandbits(64):x}"
    channel = grpc.insecure_channel(target, [("grpc.use_local_subchannel_pool", 1)])
    try:
        for index, _ in enumerate(pb_grpc.StyleTransferStub(channel).Stylize(request, timeout=60)):
            if index >= rng.randint(0, 4):
                break
        tally.add("killed:vanished")
    except grpc.RpcError as error:
        tally.add(f"killed:{error.code().name}")
    finally:
        channel.close()


def video_session(stub: pb_grpc.StyleTransferStub, rng: random.Random, kill: bool, tally: Tally) -> None:
    """A short fast-mode stream; all frames must come back in order (or the stream is refused when full)."""
    count = rng.randint(3, 10)
    frames = [noisy_png(rng, (64, 48)) for _ in range(count)]
    config = pb.VideoConfig(styles=[pb.Style(image=noisy_png(rng, (32, 32)))], mode=pb.MODE_FAST,
                            consistency=False)
    messages = [pb.StylizeVideoRequest(config=config),
                *(pb.StylizeVideoRequest(frame=pb.VideoFrame(index=i, image=f)) for i, f in enumerate(frames))]
    start = time.monotonic()
    call = stub.StylizeVideo(iter(messages), timeout=300)
    got: list[int] = []
    try:
        for response in call:
            if response.WhichOneof("event") == "frame":
                got.append(response.frame.index)
                if kill and len(got) >= 2:
                    call.cancel()
            elif response.WhichOneof("event") == "completed":
                tally.add("video:OK", None)
        if got != list(range(count)):
            with tally.lock:
                tally.unexpected.append(f"video: frames {got} of {count}")
    except grpc.RpcError as error:
        code = error.code().name
        tally.add(f"video:{'killed' if kill and code == 'CANCELLED' else code}")
        if code not in ("RESOURCE_EXHAUSTED", "CANCELLED") or (code == "CANCELLED" and not kill):
            with tally.lock:
                tally.unexpected.append(f"video: {code} {error.details()}")
    with tally.lock:
        tally.waits.append(time.monotonic() - start)


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
    tally = Tally()
    samples: list[tuple[float, int]] = []
    start = time.monotonic()

    def client(index: int) -> None:
        rng = random.Random(args.seed * 1000 + index)
        with grpc.insecure_channel(target, [("grpc.use_local_subchannel_pool", 1)]) as channel:
            stub = pb_grpc.StyleTransferStub(channel)
            while not stop.is_set():
                if rng.random() < args.invalid:
                    hostile(stub, rng.choice(cases))
                elif rng.random() < args.video:
                    video_session(stub, rng, rng.random() < args.kill, tally)
                elif rng.random() < args.kill:
                    killed_job(target, valid_request(rng, args.size, args.iterations), rng, tally)
                else:
                    cut = rng.randint(200, 6000) if rng.random() < args.cut else None
                    sdk_job(target, valid_request(rng, args.size, args.iterations), cut, tally)

    def hostile(stub: pb_grpc.StyleTransferStub, case: Any) -> None:
        result = one_call(stub, case.request, timeout=600)
        tally.add(f"hostile:{result.code}")
        full = result.code == "RESOURCE_EXHAUSTED"  # a full queue or budget refuses before validating
        if not full and (result.code not in case.allowed or (result.code != "OK" and
                                                              case.needle not in result.message)):
            with tally.lock:
                tally.unexpected.append(f"{case.category}: {result.code} {result.message}")

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
    outcomes = tally.outcomes
    return {
        "minutes": round((time.monotonic() - start) / 60, 2), "clients": args.clients, "engine": args.engine,
        "invalid_share": args.invalid, "video_share": args.video, "kill_share": args.kill, "cut_share": args.cut,
        "calls": sum(outcomes.values()), "outcomes": dict(sorted(outcomes.items())),
        "unexpected": tally.unexpected[:50], "unexpected_count": len(tally.unexpected),
        "sdk_results_delivered": tally.delivered, "lost": len(tally.lost), "lost_examples": tally.lost[:20],
        "duplicated": len(tally.duplicated), "duplicated_examples": tally.duplicated[:20],
        "hung": sum(t.is_alive() for t in threads), "server_survived": alive,
        "sdk_job_latency_ms": {"p50": round(percentile(tally.latencies, 0.5) * 1000, 1),
                               "p99": round(percentile(tally.latencies, 0.99) * 1000, 1)},
        "video_stream_ms": {"p50": round(percentile(tally.waits, 0.5) * 1000, 1),
                            "p99": round(percentile(tally.waits, 0.99) * 1000, 1)},
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
    ok = not report["unexpected_count"] and not report["hung"] and report["server_survived"] and \
        not report["lost"] and not report["duplicated"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
