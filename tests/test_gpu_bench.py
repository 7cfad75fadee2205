"""bench/gpu.py runs end to end on the CPU at a tiny size (its GPU run is the real measurement)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from styletx_core.options import StylizeOptions

REPO = Path(__file__).resolve().parents[1]


def _load_bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gpu_bench", REPO / "bench" / "gpu.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_gpu_bench_writes_its_report_on_cpu(tmp_path: Path, random_vgg_weights: Path) -> None:
    bench = _load_bench()
    path = bench.main(["--device", "cpu", "--size", "48", "--batches", "1", "2", "--iterations", "2",
                       "--coarse-iterations", "1", "--weights", str(random_vgg_weights), "--scorer", "own",
                       "--no-compile", "--out", str(tmp_path)])
    report = json.loads(path.read_text())
    assert path.name == "gpu_cpu.json" and report["weights"] == str(random_vgg_weights)
    assert [row["batch"] for row in report["batches"]] == [1, 2]
    for row in report["batches"]:
        assert row["jobs_per_s"] == row["batch"] / row["wall_s"] > 0
        assert row["ms_per_iteration"] > 0 and row["bound_ms_per_iteration"] > 0 and row["peak_memory_bytes"] > 0
    assert report["jobs_per_s"] == max(row["jobs_per_s"] for row in report["batches"])
    measures = report["quality"]
    assert set(measures["batched"]) == set(measures["alone"]) >= {"style_distance_mean"}
    assert measures["mean_pixel_difference"] < 3
    levers = report["levers"]  # measured on the CPU too, except what needs CUDA
    assert set(levers) == {"batch_1", "batch_2", "sync"}
    for row in (levers["batch_1"], levers["batch_2"]):
        assert row["eager_ms"] > 0 and row["cuda_graph"].startswith("skipped: CUDA graphs need")
        assert row["compiled"] == "skipped: --no-compile"  # compiling costs minutes on this CPU
    assert levers["sync"]["every_1_s"] > 0 and levers["sync"]["speedup"] > 0


def test_the_compile_lever_times_the_compiled_network(monkeypatch, engine) -> None:
    """The plumbing of the torch.compile lever, with compilation itself replaced (it costs minutes here; the
    bench measures it for real on the GPU, and bench/perf.py on this CPU)."""
    bench = _load_bench()
    compiled: list[torch.nn.Module] = []
    monkeypatch.setattr(torch, "compile", lambda module, **_: compiled.append(module) or module)
    opts = StylizeOptions(size=32, min_size=32, iterations=1, coarse_iterations=0)
    result = bench.compiled_ms(engine, opts, (32, 24), 2)
    assert result["ms"] > 0 and result["compile_s"] > 0
    assert len(compiled) == 1 and compiled[0] is not engine.network(opts.model, opts.pooling)  # a copy
