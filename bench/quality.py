"""The quality benchmark of issue 4: the engine's defaults against the original neural-style, four measures.

For each content/style pair that has a reference output in ``../shared/images/reference`` (neural-style at its
defaults: 1000 L-BFGS iterations at 512 px), stylise the content at 512 px long side with the default
:class:`~styletx_core.options.StylizeOptions`, then score the result and the reference with
:mod:`styletx_core.scoring` (the ONNX export of the offline VGG19 is the validation network):

* style distance: relative Frobenius distance of Gram matrices, mean over relu1_1 … relu5_1 (lower is better)
* content distance: relative distance of relu4_2 features to the content's (lower is better)
* layout: SSIM of σ = 2 px blurred luminance against the content (higher is better; network-free)
* Magenta cosine: style-embedding cosine to the style (higher is better; a network the loop never sees)

plus iterations, full-resolution-equivalent iterations and wall time. The target: better than the reference on
all four at once in at most 100 equivalent iterations.

    python bench/quality.py [--images ../shared/images] [--size 512] [--references-only]
    python bench/quality.py --set style_energy_power=0 --name quality_energy0   # an ablation

Writes ``bench/results/<name>.json`` and ``<name>.md`` (``--name`` defaults to ``quality``; results as
``<name>_<pair>.png``, not committed). ``--set`` changes engine options (values are JSON: ``2``, ``"fp32"``,
``[1,1,1,2,2]``). Timings depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from styletx_core.imageio import load_image
from styletx_core.onnx_export import DEFAULT_LAYERS
from styletx_core.options import StylizeOptions
from styletx_core.progress import Iterate
from styletx_core.scoring import MagentaStyleEmbedder, QualityScorer, QualityScores
from styletx_core.vgg import VGGFeatures
from styletx_core.weights import ensure_cached, load_vgg_weights

ROOT = Path(__file__).resolve().parents[1]
MEASURES = (  # key, label, True when higher is better
    ("style_distance_mean", "style distance ↓", False),
    ("content_distance", "content distance ↓", False),
    ("layout_ssim", "layout SSIM ↑", True),
    ("style_cosine", "Magenta cosine ↑", True),
)


@dataclass(frozen=True)
class Pair:
    content: str
    style: str
    reference: str

    @property
    def name(self) -> str:
        return Path(self.reference).stem


PAIRS = (
    Pair("tubingen.jpg", "starry_night.jpg", "tubingen_starry.png"),
    Pair("golden_gate.jpg", "starry_night.jpg", "golden_gate_starry.png"),
    Pair("tubingen.jpg", "shipwreck.jpg", "tubingen_shipwreck.png"),
)


def build_scorer(cache_dir: str | None) -> QualityScorer:
    """The offline VGG19 (fetched if missing) exported to ONNX, plus the Magenta predictor."""
    ensure_cached("vgg19", cache_dir)
    weights = load_vgg_weights("vgg19", "offline", cache_dir=cache_dir)
    features = VGGFeatures("vgg19", weights.state_dict, weights.preprocessing, DEFAULT_LAYERS)
    return QualityScorer.from_features(features, cache_dir=cache_dir,
                                       magenta=MagentaStyleEmbedder.from_cache(cache_dir))


def stylise(content: Image.Image, style: Image.Image, size: int, cache_dir: str | None,
            changes: dict[str, Any]) -> dict[str, Any]:
    from styletx_core.engine import StyleTransfer

    engine = StyleTransfer(device="cpu", weights="auto", cache_dir=cache_dir)
    opts = StylizeOptions(size=size, seed=0, **changes)
    def progress(step: Iterate) -> None:
        if step.iteration % 25 == 0 or step.iteration == step.total_iterations:
            logging.info("  iteration %d/%d at %d×%d, loss %.4g, %.0f s", step.iteration,
                         step.total_iterations, step.width, step.height, step.loss, step.elapsed)

    start = time.perf_counter()
    result = engine.stylize(content, [style], opts, progress)
    return {"image": result.image, "iterations": result.iterations,
            "equivalent_iterations": round(result.equivalent_iterations, 1),
            "wall_s": round(time.perf_counter() - start, 1),
            "options": f"defaults (seed 0){changes_label(changes)}"}


def changes_label(changes: dict[str, Any]) -> str:
    """The ``--set`` changes as ``, name=value`` for the result files (empty for the defaults)."""
    return "".join(f", {name}={value!r}" for name, value in changes.items())


def option_change(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` → (name, JSON value; a bare word is a string): ``precision=fp32``, ``style_weight=8``."""
    name, sep, value = text.partition("=")
    if not sep or name not in StylizeOptions.__dataclass_fields__:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE with NAME an engine option")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return name, tuple(parsed) if isinstance(parsed, list) else parsed


def wins(ours: QualityScores, reference: QualityScores) -> dict[str, bool]:
    """Per measure: is ours strictly better than the reference?"""
    result = {}
    for key, _, higher in MEASURES:
        a, b = getattr(ours, key), getattr(reference, key)
        result[key] = bool(a is not None and b is not None and (a > b if higher else a < b))
    return result


def run_pair(pair: Pair, args: argparse.Namespace, scorer: QualityScorer) -> dict[str, Any]:
    images, size = args.images, args.size
    content = load_image(images / "content" / pair.content, field=pair.content)
    style = load_image(images / "style" / pair.style, field=pair.style)
    reference = load_image(images / "reference" / pair.reference, field=pair.reference)
    logging.info("%s: scoring the reference (%d×%d)", pair.name, *reference.size)
    reference_scores = scorer.score(content, [style], reference)
    entry: dict[str, Any] = {"pair": pair.name, "content": pair.content, "style": pair.style,
                             "reference": reference_scores.as_dict()}
    entry["reference"]["size"] = list(reference.size)
    if args.references_only:
        return entry
    logging.info("%s: stylising at %d px with the defaults %s", pair.name, size, args.set or "")
    run = stylise(content, style, size, args.cache_dir, args.set)
    image = run.pop("image")
    image.save(args.out / f"{args.name}_{pair.name}.png")
    ours = scorer.score(content, [style], image)
    entry["styletx"] = ours.as_dict() | run | {"size": list(image.size)}
    entry["better_than_reference"] = wins(ours, reference_scores)
    entry["all_four_better"] = all(entry["better_than_reference"].values())
    return entry


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Quality benchmark (`bench/quality.py`)",
        "",
        f"{results['size']} px long side; engine {results['options']}; scores from the ONNX export of the offline VGG19 "
        "(Gram relu1_1–relu5_1, content relu4_2), layout SSIM (σ = 2 px blurred luminance), Magenta "
        "style-embedding cosine. Reference = neural-style, 1000 L-BFGS iterations.",
        f"Machine: {results['machine']}.",
        "",
        "| pair | run | style dist ↓ | content dist ↓ | layout SSIM ↑ | Magenta cos ↑ | colour ΔE ↓ "
        "| iterations | equiv. iters | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in results["pairs"]:
        for run in ("reference", "styletx"):
            if run not in entry:
                continue
            s = entry[run]
            iters = ("1000", "1000", "—") if run == "reference" else (
                str(s["iterations"]), f"{s['equivalent_iterations']:.1f}", f"{s['wall_s']:.0f}")
            lines.append(f"| {entry['pair']} | {run} | {s['style_distance_mean']:.4f} | "
                         f"{s['content_distance']:.4f} | {s['layout_ssim']:.4f} | {s['style_cosine']:.4f} | "
                         f"{s['color_distance']:.2f} | {' | '.join(iters)} |")
        if "better_than_reference" in entry:
            better = [label for key, label, _ in MEASURES if entry["better_than_reference"][key]]
            lines.append(f"| {entry['pair']} | **better on** | {len(better)}/4: {', '.join(better) or '—'} "
                         "| | | | | | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "images")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--pairs", nargs="+", default=[p.name for p in PAIRS],
                        help="subset, by reference name")
    parser.add_argument("--references-only", action="store_true",
                        help="score the references, skip the engine")
    parser.add_argument("--set", type=option_change, action="append", default=[], metavar="NAME=VALUE",
                        help="change an engine option (JSON value); repeatable")
    parser.add_argument("--name", default="quality", help="stem of the result files")
    args = parser.parse_args()
    args.set = dict(args.set)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    scorer = build_scorer(args.cache_dir)
    results: dict[str, Any] = {
        "size": args.size,
        "options": f"defaults{changes_label(args.set)}",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads, onnxruntime {scorer.extractor.provider} "
                   "(shared with other jobs: wall times are noisy)",
        "validation_network": scorer.extractor.metadata.as_dict(),
        "pairs": [],
    }
    for pair in PAIRS:
        if pair.name in args.pairs:  # written after each pair: a long run keeps what it finished
            results["pairs"].append(run_pair(pair, args, scorer))
            (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
            (args.out / f"{args.name}.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
