"""Jobs per GPU-second with jobs optimised together in one batch (issue 20), in one command.

    python bench/gpu.py                                  # an H200: 512 px, batches 1 … 32, ≈ 5 min
    python bench/gpu.py --device cpu --size 64 --batches 1 2 --iterations 3 --coarse-iterations 2   # smoke

Writes ``bench/results/gpu_<device>.json``:

* per batch size B: wall seconds for B default-quality jobs run together (:func:`styletx_core.batch.stylize_batch`),
  ``jobs_per_s`` (B / wall), per-job latency (every job of a batch finishes with it), ms per iteration at the
  final scale against the bare network bound at the same batch (forward + input-gradient backward of the
  truncated VGG, channels-last, the job's precision, no losses or optimiser), model-FLOP utilisation (the
  bound's FLOPs, counted by ``torch.utils.flop_counter``, per measured iteration time over ``--peak-tflops``)
  and peak device memory;
* ``jobs_per_s``: the best batch's figure (the issue's goal: ≥ 10 default 512 px jobs per second on an H200);
* ``levers`` (item 4 of the issue, measured before anything is kept): at batch 1 and at the largest batch ≤ 8,
  the bare step eager, under ``torch.compile`` (and its compile time) and replayed from a CUDA graph (GPU
  only); and one batch-1 job reading its losses every iteration against every ``GPU_SYNC_EVERY`` (the engine's
  default on a GPU), which shows what a host sync per iteration costs;
* ``quality``: one job batched (at the largest batch) against the same job alone — the four measures of
  ``bench/quality.py`` where its scorer is available (offline VGG16 + Magenta in the cache), else the
  engine's own (mean relative style error, content loss), and the mean pixel difference.

Setup on a GPU machine: use the torch it ships (never pip-install torch there). The engine needs Pillow and
numpy besides; a machine that cannot reach a package index gets them from wheels carried with the working tree
(``pip download pillow numpy -d build/wheels`` here, then ``pip install --no-index build/wheels/*.whl`` there).
It puts the repository root on ``sys.path`` itself: ``python bench/gpu.py`` needs no install.

Weights: ``--weights auto`` (the offline cache) when present, else random He-initialised VGG weights, which
time exactly the same; the JSON says which (``weights``) — quality measures on random weights compare batched
against alone only. Every step is bounded by ``--budget-seconds``: batches that would start after it are
skipped and listed under ``skipped``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from random_vgg import write_random_vgg19  # noqa: E402  (bench/)

from styletx_core.batch import BatchJob, stylize_batch  # noqa: E402
from styletx_core.engine import StyleTransfer  # noqa: E402
from styletx_core.options import StylizeOptions  # noqa: E402
from styletx_core.progress import StylizeResult  # noqa: E402

LOG = logging.getLogger("gpu")
RESULTS = ROOT / "bench" / "results"
DEMO = ROOT / "demo"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--iterations", type=int, help="final-scale iterations (default: the engine's)")
    parser.add_argument("--coarse-iterations", type=int, help="per coarser scale (default: the engine's)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--weights", default="auto", help="auto (offline cache, else random) or a file path")
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="the device's dense bf16 peak")
    parser.add_argument("--budget-seconds", type=float, default=420.0, help="stop starting batches after this")
    parser.add_argument("--scorer", choices=["auto", "own"], default="auto",
                        help="auto: bench/quality.py's scorer when its weights are cached; own: the engine's")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the torch.compile lever (its compile costs a minute or more on a CPU)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def build_engine(args: argparse.Namespace) -> tuple[StyleTransfer, str]:
    """The engine on real weights when they are on disk, else on random ones (same timing)."""
    from styletx_core.artifacts import cache_dir

    if args.weights != "auto":
        return StyleTransfer(device=args.device, weights="file", weights_path=args.weights), args.weights
    if (cache_dir(None) / "vgg19-offline.safetensors").exists():  # never fetch: GPU machines may be offline
        return StyleTransfer(device=args.device, weights="offline"), "offline"
    path = Path(tempfile.mkdtemp()) / "vgg19-random.safetensors"
    write_random_vgg19(path)
    return StyleTransfer(device=args.device, weights="file", weights_path=path), "random"



def images() -> tuple[Image.Image, list[Image.Image]]:
    """The demo content and styles shipped in the repository (they travel with it to a GPU machine)."""
    content = Image.open(DEMO / "chelsea.jpg").convert("RGB")
    styles = [Image.open(DEMO / name).convert("RGB") for name in ("starry_night.jpg", "shipwreck.jpg")]
    return content, styles


def options(args: argparse.Namespace, seed: int) -> StylizeOptions:
    changes: dict[str, Any] = {"size": args.size, "seed": seed, "precision": args.precision}
    if args.iterations is not None:
        changes["iterations"] = args.iterations
    if args.coarse_iterations is not None:
        changes["coarse_iterations"] = args.coarse_iterations
    return StylizeOptions(**changes)


def jobs_for(args: argparse.Namespace, count: int) -> list[BatchJob]:
    """``count`` default-quality jobs on one content: each its own seed and style (alternating)."""
    content, styles = images()
    return [BatchJob(content, [styles[k % len(styles)]], options(args, seed=k)) for k in range(count)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def final_scale_ms(result: StylizeResult) -> float:
    """Milliseconds per iteration over the final scale (its first iteration dropped: optimiser start)."""
    last = max(step["scale"] for step in result.history)
    steps = [step for step in result.history if step["scale"] == last]  # read iterations only, on a GPU
    done = steps[-1]["iteration"] - steps[0]["iteration"]
    return 1000 * (steps[-1]["elapsed"] - steps[0]["elapsed"]) / max(1, done)


def run_batch(engine: StyleTransfer, jobs: list[BatchJob]) -> tuple[float, list[StylizeResult], int]:
    device = engine.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    outcomes = stylize_batch(engine, jobs)
    synchronize(device)
    wall = time.perf_counter() - start
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(jobs)} jobs failed: {failed[0]!r}")
    return wall, [o for o in outcomes if isinstance(o, StylizeResult)], engine.peak_memory()


def bare_step(engine: StyleTransfer, opts: StylizeOptions, size: tuple[int, int], batch: int,
              net: torch.nn.Module | None = None) -> tuple[Callable[[], None], torch.Tensor]:
    """The bare forward + input-gradient backward of the job's network for ``batch`` images of ``size`` (no
    losses, no optimiser): the bound an iteration cannot beat. Returns the step and its input."""
    if net is None:
        net = engine.network(opts.model, opts.pooling, (*opts.content_layers, *opts.style_layers))
    width, height = size
    x = torch.rand(batch, 3, height, width, device=engine.device).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)

    def step() -> None:
        x.grad = None
        with engine._autocast(opts):
            features = net(x)
        torch.stack([f.float().sum() for f in features.values()]).sum().backward()

    return step, x


def step_ms(step: Callable[[], None], device: torch.device, repeats: int = 5) -> float:
    step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    synchronize(device)
    return 1000 * (time.perf_counter() - start) / repeats


def bound(engine: StyleTransfer, opts: StylizeOptions, size: tuple[int, int], batch: int) -> tuple[float, float]:
    """(ms, FLOPs) of the bare step (:func:`bare_step`) for ``batch`` images of ``size``."""
    from torch.utils.flop_counter import FlopCounterMode

    step, _ = bare_step(engine, opts, size, batch)
    step()
    with FlopCounterMode(display=False) as counter:
        step()
    return step_ms(step, engine.device), float(counter.get_total_flops())


def compiled_ms(engine: StyleTransfer, opts: StylizeOptions, size: tuple[int, int], batch: int) -> dict[str, Any]:
    """The bare step with the network under ``torch.compile`` (fixed shape, as a scale's closure is)."""
    net = engine.network(opts.model, opts.pooling, (*opts.content_layers, *opts.style_layers))
    compiled = torch.compile(copy.copy(net), dynamic=False)
    step, _ = bare_step(engine, opts, size, batch, compiled)  # type: ignore[arg-type]
    start = time.perf_counter()
    step()
    synchronize(engine.device)
    return {"compile_s": time.perf_counter() - start, "ms": step_ms(step, engine.device)}


def cuda_graph_ms(engine: StyleTransfer, opts: StylizeOptions, size: tuple[int, int], batch: int) -> float:
    """The bare step captured once in a CUDA graph and replayed (static input and gradient buffers)."""
    step, _ = bare_step(engine, opts, size, batch)
    stream = torch.cuda.Stream(engine.device)
    stream.wait_stream(torch.cuda.current_stream(engine.device))
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up on a side stream, as torch.cuda.graphs asks
            step()
    torch.cuda.current_stream(engine.device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return step_ms(graph.replay, engine.device)


def levers(engine: StyleTransfer, args: argparse.Namespace, size: tuple[int, int]) -> dict[str, Any]:
    """Eager vs ``torch.compile`` vs CUDA graph for the bare step, and a host sync per iteration vs every
    ``GPU_SYNC_EVERY``; each lever that fails records why instead of ending the run."""
    opts = options(args, seed=0)
    report: dict[str, Any] = {}
    for batch in sorted({1, max([b for b in args.batches if b <= 8], default=1)}):
        row: dict[str, Any] = {"eager_ms": step_ms(bare_step(engine, opts, size, batch)[0], engine.device)}
        for name, lever in (("compiled", compiled_ms), ("cuda_graph", cuda_graph_ms)):
            if name == "cuda_graph" and engine.device.type != "cuda":
                row[name] = "skipped: CUDA graphs need a CUDA device"
                continue
            if name == "compiled" and args.no_compile:
                row[name] = "skipped: --no-compile"
                continue
            try:
                row[name] = lever(engine, opts, size, batch)
            except Exception as error:  # a benchmark records why a lever is unavailable
                row[name] = f"failed: {type(error).__name__}: {error}"[:400]
        report[f"batch_{batch}"] = row
    report["sync"] = sync_cost(engine, args)
    return report


def sync_cost(engine: StyleTransfer, args: argparse.Namespace) -> dict[str, Any]:
    """One batch-1 job reading its losses every iteration, then every ``GPU_SYNC_EVERY`` (same engine)."""
    from styletx_core.engine import GPU_SYNC_EVERY

    walls = {}
    saved = engine.sync_every
    try:
        for every in (1, GPU_SYNC_EVERY):
            engine.sync_every = every
            walls[f"every_{every}_s"] = run_batch(engine, jobs_for(args, 1))[0]
    finally:
        engine.sync_every = saved
    walls["speedup"] = walls["every_1_s"] / walls[f"every_{GPU_SYNC_EVERY}_s"]
    return walls


def quality(engine: StyleTransfer, job: BatchJob, batched: StylizeResult, scorer: str) -> dict[str, Any]:
    """One job's result in a batch against the same job alone (same seed)."""
    from styletx_core.artifacts import cache_dir

    alone = engine.stylize(job.content, job.styles, job.opts)
    pixels = np.abs(np.asarray(batched.image, dtype=np.float64) - np.asarray(alone.image, dtype=np.float64))
    report: dict[str, Any] = {"mean_pixel_difference": float(pixels.mean())}
    try:
        if scorer != "auto" or not (cache_dir(None) / "vgg16-offline.safetensors").exists():
            raise FileNotFoundError("not asked for, or no offline VGG16 in the cache (nothing is downloaded)")
        sys.path.insert(0, str(ROOT / "bench"))
        from quality import build_scorers, independent_arch

        scorer = build_scorers(None)[independent_arch(job.opts.model)]
        report["scorer"] = "bench/quality.py (independent VGG + Magenta)"
        report["batched"] = scorer.score(job.content, job.styles, batched.image).as_dict()
        report["alone"] = scorer.score(job.content, job.styles, alone.image).as_dict()
    except Exception as error:  # no offline scorer on this machine: the engine's own measures instead
        report["scorer"] = f"engine's own measures (bench/quality.py scorer unavailable: {type(error).__name__})"
        report["batched"], report["alone"] = own_measures(batched), own_measures(alone)
    return report


def own_measures(result: StylizeResult) -> dict[str, float]:
    errors = list(result.style_errors.values())
    return {"style_distance_mean": float(np.mean(errors)) if errors else float("nan"),
            "content_loss": float(result.losses.get("content", float("nan"))),
            "total_loss": float(result.losses.get("loss", float("nan")))}


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs)"


def measure(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    engine, weights = build_engine(args)
    LOG.info("device %s, weights %s", engine.device, weights)
    warm = jobs_for(args, 1)
    warm[0].opts = warm[0].opts.replace(iterations=2, coarse_iterations=1)
    stylize_batch(engine, warm)  # networks built, kernels chosen, style targets cached
    rows, skipped, last_results, last_jobs = [], [], [], []
    for batch in sorted(args.batches):
        if time.perf_counter() - started > args.budget_seconds:
            skipped.append(batch)
            continue
        jobs = jobs_for(args, batch)
        wall, results, peak = run_batch(engine, jobs)
        size = results[0].image.size
        bound_ms, flops = bound(engine, jobs[0].opts, size, batch)
        ms = final_scale_ms(results[0])
        rows.append({"batch": batch, "wall_s": wall, "jobs_per_s": batch / wall, "latency_s": wall,
                     "ms_per_iteration": ms, "bound_ms_per_iteration": bound_ms, "over_bound": ms / bound_ms,
                     "mfu": flops / (ms / 1000) / (args.peak_tflops * 1e12) if engine.device.type == "cuda"
                     else None, "peak_memory_bytes": peak, "iterations": results[0].iterations,
                     "equivalent_iterations": results[0].equivalent_iterations})
        LOG.info("batch %d: %.2f s, %.2f jobs/s, %.1f ms/it (bound %.1f)", batch, wall, batch / wall, ms, bound_ms)
        last_results, last_jobs = results, jobs
    best = max(rows, key=lambda row: row["jobs_per_s"])
    lever_report = levers(engine, args, size) if time.perf_counter() - started < args.budget_seconds else \
        "skipped: over --budget-seconds"
    return {"device": device_label(engine.device), "torch": torch.__version__, "weights": weights,
            "size": args.size, "precision": engine.precision(last_jobs[0].opts), "jobs_per_s": best["jobs_per_s"],
            "best_batch": best["batch"], "batches": rows, "skipped": skipped, "levers": lever_report,
            "quality": quality(engine, last_jobs[-1], last_results[-1], args.scorer),
            "seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> Path:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    report = measure(args)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "cpu" if args.device == "cpu" else re.sub(r"[^a-z0-9]+", "_", report["device"].lower()).strip("_")
    path = args.out / f"gpu_{name}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    LOG.info("wrote %s: %.2f jobs/s at batch %d", path, report["jobs_per_s"], report["best_batch"])
    return path


if __name__ == "__main__":
    main()
