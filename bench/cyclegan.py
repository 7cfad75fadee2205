"""CycleGAN figures: generator latency, training throughput, a longer learning run, tiling faithfulness.

* ``latency``: the shipped 9-block generator (vintagify, ngf 64) at 512² and 1024² on CPU: torch fp32, torch
  bf16 autocast + channels_last, onnxruntime, and ``run_tiled`` with 512-px tiles; median wall time.
* ``train``: optimisation steps per second (generator + discriminator updates) at 64 and 256 px for the paper's
  architecture (9 blocks, ngf = ndf = 64) and for the tiny one the test suite trains.
* ``learning``: the test's two synthetic domains (photo crops vs. a fixed colour + stripe transform), trained
  longer; the cycle loss and the A→B mean-colour distance to domain B at intervals.
* ``tiling`` (``--tiling``, slow): tiled vs. untiled output of the vintagify generator on a 768×576 photo,
  with exact, mosaic, downscaled and per-tile instance-norm statistics.

    python bench/cyclegan.py [--repeats 3] [--learning-steps 600] [--tiling] [--threads N]

Writes ``bench/results/cyclegan.json``. Timings depend on the machine and its load (this one is shared by
several processes): compare ratios within one run, and read ``load_average`` in the output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from styletx_core.cyclegan import (
    CycleGANGenerator,
    OnnxGenerator,
    TrainIterate,
    TrainOptions,
    export_onnx,
    fetch_vintagify,
    load_generator,
    train_cyclegan,
    translate_tensor,
)
from styletx_core.cyclegan.train import _build, _discriminator_step, _generator_step

ROOT = Path(__file__).resolve().parents[1]
from domains import crops, synthetic, write_images  # noqa: E402 - the test's domains (bench/domains.py)


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn`` over ``repeats`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def latency(gen: CycleGANGenerator, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_gen = OnnxGenerator(export_onnx(gen, Path(tmp) / "g.onnx"))
        cl = CycleGANGenerator(gen.config).eval()
        cl.load_state_dict(gen.state_dict())
        cl = cl.to(memory_format=torch.channels_last)
        for side in (512, 1024):
            x = synthetic(side, side)
            reps = repeats if side == 512 else max(1, repeats // 2)
            row: dict[str, float] = {}
            xc = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                row["torch_fp32_s"] = timed(lambda: gen(x), reps)  # noqa: B023 - called before x changes
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    row["torch_bf16_channels_last_s"] = timed(lambda: cl(xc), reps)  # noqa: B023
            row["onnxruntime_s"] = timed(lambda: onnx_gen(x), reps)  # noqa: B023
            if side > 512:
                row["tiled_512_overlap64_s"] = timed(lambda: translate_tensor(gen, x, 512, 64), reps, 0)  # noqa: B023
            out[str(side)] = row
            print(side, row, flush=True)
    return out


def train_speed(steps: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    configs = {"paper_9blocks_ngf64": TrainOptions(), "test_1block_ngf8": TrainOptions(n_blocks=1, ngf=8, ndf=8)}
    for name, opts in configs.items():
        for side in (64, 256):
            s = _build(opts, torch.device("cpu"))
            a, b = torch.rand(1, 3, side, side) * 2 - 1, torch.rand(1, 3, side, side) * 2 - 1
            off = torch.autocast("cpu", enabled=False)

            def step(s: Any = s, a: torch.Tensor = a, b: torch.Tensor = b, off: Any = off,
                     opts: TrainOptions = opts) -> None:
                _, fa, fb = _generator_step(s, a, b, opts, off)
                _discriminator_step(s, a, b, fa, fb, off)

            n = steps if side == 64 or name.startswith("test") else max(2, steps // 4)
            sec = timed(step, n, warmup=1)
            out[f"{name}@{side}"] = {"steps_per_s": round(1 / sec, 3), "s_per_step": round(sec, 4)}
            print(name, side, out[f"{name}@{side}"], flush=True)
    return out


def learning(steps: int) -> dict[str, Any]:
    """One run with the paper's schedule; at every checkpoint the A→B generator is evaluated on held-out A."""
    rng = np.random.default_rng(0)
    a, b, held = crops(48, rng, False), crops(48, rng, True), crops(16, rng, False)
    x = torch.from_numpy(held[:, 4:68, 4:68].astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)
    target = torch.from_numpy(b.astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2).mean(dim=(0, 2, 3))
    every = max(1, steps // 6)
    opts = TrainOptions(steps=steps, decay_from=0.5, load_size=72, crop_size=64, n_blocks=3, ngf=16, ndf=16,
                        sample_every=0, checkpoint_every=every, device="cpu")
    curve: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cycle: list[float] = []
        start = time.perf_counter()

        def evaluate(it: TrainIterate) -> None:
            cycle.append(it.losses["cycle"])
            if it.step % every:
                return
            with torch.no_grad():  # the checkpoint of this step was written just before the callback
                moved = load_generator(root / "out" / "latest_net_G_A.pth")(x).mean(dim=(0, 2, 3))
            curve.append({"step": it.step, "cycle_loss_mean_last_interval": round(float(np.mean(cycle[-every:])), 4),
                          "colour_distance_to_B": round(float((moved - target).norm()), 4),
                          "lr": it.lr, "elapsed_s": round(time.perf_counter() - start, 1)})
            print(curve[-1], flush=True)

        train_cyclegan(write_images(a, root / "a"), write_images(b, root / "b"), root / "out", opts, evaluate)
    return {"config": "paper objective and Adam 2e-4, linear decay from 50 %; 3 blocks, ngf=ndf=16, 64 px, "
                      "48 + 48 images", "colour_distance_A_to_B": round(float((x.mean(dim=(0, 2, 3)) - target).norm()), 4),
            "curve": curve}


def tiling(gen: CycleGANGenerator) -> dict[str, Any]:
    from styletx_core.cyclegan import tiling as t

    photo = ROOT.parent / "shared" / "images" / "content" / "tubingen.jpg"
    image = Image.open(photo).convert("RGB").resize((768, 576)) if photo.exists() else None
    x = t.image_to_tensor(image) if image is not None else synthetic(576, 768)
    with torch.inference_mode():
        ref = gen(x)

    def err(y: torch.Tensor) -> dict[str, float]:
        d = (y - ref).abs()
        return {"mean": round(float(d.mean()), 5), "p99": round(float(d.quantile(0.99)), 4)}

    out = {"exact_stats": err(translate_tensor(gen, x, 384, 64, stats_side=768)),
           "mosaic_384_patch128": err(translate_tensor(gen, x, 384, 64, stats_side=384, stats_patch=128))}
    with torch.inference_mode():  # an unfrozen torch generator normalises each tile on its own
        out["per_tile_stats"] = err(t._tile_pass(gen, x, t._tiles(576, 768, 384, 64), lambda: None))
    return {"image": str(photo.name if image is not None else "synthetic"), "tile": 384, "overlap": 64, **out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=8)
    parser.add_argument("--learning-steps", type=int, default=600)
    parser.add_argument("--tiling", action="store_true")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip", nargs="*", default=[], choices=["latency", "train", "learning"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = load_generator(fetch_vintagify())
    out = ROOT / "bench" / "results" / "cyclegan.json"
    # Sections not run this time (--skip) keep their figures from the previous run, with its machine record.
    results: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    results["note"] = "CPU only; the machine was shared with other jobs: compare ratios within one section"
    results.setdefault("runs", []).append(
        {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": args.threads,
         "torch": torch.__version__, "load_average_start": os.getloadavg(),
         "sections": [s for s in ("latency", "train", "learning") if s not in args.skip]
         + (["tiling"] if args.tiling else [])})
    if "latency" not in args.skip:
        results["generator_latency_cpu"] = latency(gen, args.repeats)
    if "train" not in args.skip:
        results["training_speed_cpu"] = train_speed(args.train_steps)
    if "learning" not in args.skip:
        results["learning_run"] = learning(args.learning_steps)
    if args.tiling:
        results["tiling_vs_untiled"] = tiling(gen)
    results["runs"][-1]["load_average_end"] = os.getloadavg()
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(out)


if __name__ == "__main__":
    main()
