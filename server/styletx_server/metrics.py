"""Prometheus metrics, in a registry of their own so that several servers (tests) can live in one process."""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class Metrics:
    """Queue depth, job latency, iterations per second and style-target cache hits."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.queue_depth = Gauge("styletx_queue_depth", "Jobs waiting for a worker", registry=self.registry)
        self.jobs_running = Gauge("styletx_jobs_running", "Jobs running now", registry=self.registry)
        self.jobs = Counter("styletx_jobs", "Finished jobs by gRPC status code", ["code"],
                            registry=self.registry)
        self.job_seconds = Histogram("styletx_job_seconds", "Request arrival to last event, successful jobs",
                                     buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.iterations = Counter("styletx_iterations", "Optimisation iterations run",
                                  registry=self.registry)
        self.iterations_per_second = Gauge("styletx_iterations_per_second",
                                           "Iterations per second of the last finished job",
                                           registry=self.registry)
        self.cache_hits = Counter("styletx_style_cache_hits", "Style targets reused from the cache",
                                  registry=self.registry)
        self.cache_misses = Counter("styletx_style_cache_misses", "Style targets computed",
                                    registry=self.registry)
        self.parity_gate_ok = Gauge("styletx_parity_gate_ok",
                                    "1 when the ONNX parity gate passed (or is off), 0 when it failed",
                                    registry=self.registry)
        self.admitted_memory = Gauge("styletx_admitted_memory_bytes",
                                     "Memory reserved by admitted work (queued, running, kept results)",
                                     registry=self.registry)
        self.runs = Counter("styletx_job_runs", "Image jobs started on a worker (a retry that attaches to a job "
                            "does not start it again)", registry=self.registry)
        self.attached = Counter("styletx_request_id_attached", "Calls that attached to an existing job by its "
                                "request_id", ["state"], registry=self.registry)
        self.batch_size = Histogram("styletx_batch_size", "Image jobs a worker ran together (1: alone)",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.job_run_seconds = Histogram("styletx_job_run_seconds", "Start to result of each successful job, "
                                         "on its worker (a batched job's own latency)",
                                         buckets=_LATENCY_BUCKETS, registry=self.registry)
        self._cache_seen: dict[int, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def serve(self, port: int, host: str = "0.0.0.0") -> Any:
        """Expose ``/metrics`` on ``port`` (a thread of prometheus_client's own)."""
        return start_http_server(port, addr=host, registry=self.registry)

    def job_finished(self, code: str, iterations: int, run_seconds: float, total_seconds: float) -> None:
        self.jobs.labels(code=code).inc()
        if code == "OK":
            self.job_seconds.observe(total_seconds)
            self.job_run_seconds.observe(run_seconds)
        self.iterations.inc(iterations)
        if run_seconds > 0 and iterations:
            self.iterations_per_second.set(iterations / run_seconds)

    def observe_cache(self, worker: int, engine: object) -> None:
        """Add the engine's cache counters since the last look (``target_cache_info()``: hits, misses)."""
        info_fn = getattr(engine, "target_cache_info", None)
        if info_fn is None:
            return
        info = info_fn()
        hits, misses = (_read(info, "hits"), _read(info, "misses"))
        with self._lock:
            last_hits, last_misses = self._cache_seen.get(worker, (0, 0))
            self._cache_seen[worker] = (hits, misses)
        self.cache_hits.inc(max(0, hits - last_hits))
        self.cache_misses.inc(max(0, misses - last_misses))


def _read(info: object, name: str) -> int:
    """``target_cache_info()`` may be a mapping or an object like ``functools._CacheInfo``."""
    value = info.get(name, 0) if isinstance(info, dict) else getattr(info, name, 0)
    return int(value or 0)
