"""bench/gpu.py runs end to end on the CPU at a tiny size (its GPU run is the real measurement)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_bench_writes_its_report_on_cpu(tmp_path: Path, random_vgg_weights: Path) -> None:
    spec = importlib.util.spec_from_file_location("gpu_bench", REPO / "bench" / "gpu.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = bench.main(["--device", "cpu", "--size", "48", "--batches", "1", "2", "--iterations", "2",
                       "--coarse-iterations", "1", "--weights", str(random_vgg_weights), "--scorer", "own",
                       "--out", str(tmp_path)])
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
