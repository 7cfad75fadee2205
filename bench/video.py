"""Temporal consistency and speed of video stylisation, on a clip whose motion is known exactly.

The clip is a camera pan and zoom over ``content/tubingen.jpg``
(:func:`styletx_core.video.synthetic.pan_zoom_clip`), so the flicker score uses the *true* backward flow
and visibility mask, not the estimator's:

* flicker = mean over t of the masked mean |O_t − warp(O_{t−1})| (0–1 units; lower is steadier);
* style distance = the project's quality measure (:class:`~styletx_core.scoring.QualityScorer`: relative Gram
  distance over relu1_1…relu5_1 of the offline VGG19's ONNX export), mean over frames; plus the Magenta
  style-embedding cosine;
* frames/s of the whole per-frame path (stylise + flow + blend), decoding and encoding excluded.

Consistent FAST restores the blend's fine-detail contrast by default (:func:`styletx_core.video.restore_detail`);
``..._plain_blend`` shows the blend without it.

Variants: per-frame FAST, consistent FAST at several blend weights (alpha), and on a shorter, smaller clip
per-frame OPTIMIZE vs consistent OPTIMIZE (warped-previous initialisation plus the temporal loss through
the engine's ``extra_losses`` hook).

    python bench/video.py [--frames 16] [--sizes 256 512] [--optimize-frames 6]

Writes ``bench/results/video.json``. Timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from styletx_core.fast import FastStylizer
from styletx_core.video import StreamStylizer, warping_error
from styletx_core.video.frames import FastFrames, OptimizeFrames
from styletx_core.video.synthetic import SyntheticClip, pan_zoom_clip

ROOT = Path(__file__).resolve().parents[1]


def run_stream(stream: StreamStylizer, clip: SyntheticClip) -> tuple[list[np.ndarray], float]:
    start = time.perf_counter()
    outputs = [stream.process(frame) for frame in clip.frames]
    return outputs, len(outputs) / (time.perf_counter() - start)


def build_scorer() -> Any:
    """The quality benchmark's scorer (offline VGG19 → ONNX) with the Magenta embedder, or None."""
    try:
        from styletx_core.onnx_export import DEFAULT_LAYERS
        from styletx_core.scoring import MagentaStyleEmbedder, QualityScorer
        from styletx_core.vgg import VGGFeatures
        from styletx_core.weights import ensure_cached, load_vgg_weights

        ensure_cached("vgg19")
        weights = load_vgg_weights("vgg19", "offline")
        features = VGGFeatures("vgg19", weights.state_dict, weights.preprocessing, DEFAULT_LAYERS)
        return QualityScorer.from_features(features, magenta=MagentaStyleEmbedder.from_cache())
    except Exception as exc:  # the benchmark still reports flicker and speed without it
        print(f"no style scorer ({exc}); style distance omitted")
        return None


def score(scorer: Any, content: list[np.ndarray], style: Image.Image, outputs: list[np.ndarray],
          every: int) -> dict[str, float]:
    if scorer is None:
        return {}
    rows = [scorer.score(Image.fromarray(content[i]), [style], Image.fromarray(outputs[i]), layout=False)
            for i in range(0, len(outputs), every)]
    return {"style_distance": float(np.mean([r.style_distance_mean for r in rows])),
            "magenta_cosine": float(np.mean([r.style_cosine for r in rows]))}


def fast_variants(clip: SyntheticClip, style: Image.Image, stylizer: FastStylizer, scorer: Any,
                  alphas: list[float], every: int) -> dict[str, Any]:
    frames = FastFrames(stylizer, [style])
    results: dict[str, Any] = {}
    variants = [("per_frame_fast", False, 0.0, False)]
    variants += [(f"consistent_fast_a{a:g}_plain_blend", True, a, False) for a in alphas[:1]]
    variants += [(f"consistent_fast_a{a:g}", True, a, True) for a in alphas]
    for name, consistency, alpha, restore in variants:
        stream = StreamStylizer(frames, "fast", consistency, alpha=alpha, restore_detail=restore)
        outputs, fps = run_stream(stream, clip)
        results[name] = {"flicker": warping_error(outputs, clip.backward_flows, clip.masks), "fps": fps,
                         **score(scorer, clip.frames, style, outputs, every)}
        print(name, json.dumps(results[name]))
    return results


def optimize_variants(clip: SyntheticClip, style: Image.Image, scorer: Any, iterations: int,
                      later: int, temporal_weight: float) -> dict[str, Any]:
    from styletx_core.engine import StyleTransfer
    from styletx_core.options import StylizeOptions

    engine = StyleTransfer(device="cpu")
    opts = StylizeOptions(iterations=iterations, min_size=max(clip.frames[0].shape[:2]), seed=0)
    results: dict[str, Any] = {"temporal_weight": temporal_weight}
    for name, consistency, later_its in (("per_frame_optimize", False, iterations),
                                         ("consistent_optimize", True, later)):
        frames = OptimizeFrames(engine, [style], opts, later_iterations=later_its,
                                temporal_weight=temporal_weight)
        outputs, fps = run_stream(StreamStylizer(frames, "optimize", consistency), clip)
        results[name] = {"flicker": warping_error(outputs, clip.backward_flows, clip.masks), "fps": fps,
                         "iterations_first": iterations, "iterations_later": later_its,
                         **score(scorer, clip.frames, style, outputs, 1)}
        print(name, json.dumps(results[name]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "images")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.5, 0.6, 0.7])
    parser.add_argument("--score-every", type=int, default=3, help="score every Nth frame for style distance")
    parser.add_argument("--optimize-frames", type=int, default=6, help="0 skips OPTIMIZE")
    parser.add_argument("--optimize-size", type=int, default=128)
    parser.add_argument("--optimize-iterations", type=int, default=40)
    parser.add_argument("--optimize-later", type=int, default=15)
    parser.add_argument("--temporal-weight", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "video.json")
    args = parser.parse_args()
    scene = Image.open(args.images / "content" / "tubingen.jpg").convert("RGB")
    style = Image.open(args.images / "style" / "starry_night.jpg").convert("RGB")
    stylizer = FastStylizer("cpu").load()
    scorer = build_scorer()
    clip_spec = {"scene": "content/tubingen.jpg", "style": "style/starry_night.jpg", "pan_px": [2.0, 1.0],
                 "zoom_per_frame": 1.01, "frames": args.frames}
    result: dict[str, Any] = {"clip": clip_spec, "fast": {}, "machine": {
        "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "note": "shared 2-core CPU (other engineers' jobs ran at the same time); compare within this run"}}
    for size in args.sizes:
        clip = pan_zoom_clip(scene, frames=args.frames, size=(size, size * 3 // 4))
        print(f"--- FAST at {size}×{size * 3 // 4}")
        result["fast"][str(size)] = fast_variants(clip, style, stylizer, scorer, args.alphas,
                                                  args.score_every)
    if args.optimize_frames:
        size = args.optimize_size
        clip = pan_zoom_clip(scene, frames=args.optimize_frames, size=(size, size * 3 // 4))
        print(f"--- OPTIMIZE at {size}×{size * 3 // 4}, {args.optimize_frames} frames")
        result["optimize"] = {"size": size, **optimize_variants(
            clip, style, scorer, args.optimize_iterations, args.optimize_later, args.temporal_weight)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
