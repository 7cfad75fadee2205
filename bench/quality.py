"""The quality benchmark: the engine's defaults against the original neural-style, four measures, two scorers.

For each content/style pair that has a reference output in ``../shared/images/reference`` (neural-style at its
defaults: 1000 L-BFGS iterations at 512 px), stylise the content at 512 px long side with the default
:class:`~styletx_core.options.StylizeOptions`, then score the result and the reference with
:mod:`styletx_core.scoring`, twice: with the ONNX export of the network the loop optimises (VGG19 by default)
and with the other one (VGG16), which the loop never sees. A pair counts as won only if all four measures beat
the reference on the independent network. The measures:

* style distance: relative Frobenius distance of Gram matrices, mean over relu1_1 … relu5_1 (lower is better)
* content distance: relative distance of relu4_2 features to the content's (lower is better)
* layout: SSIM of σ = 2 px blurred luminance against the content (higher is better; network-free)
* Magenta cosine: style-embedding cosine to the style (higher is better; a network the loop never sees)

plus iterations, full-resolution-equivalent iterations and wall time. The target: better than the reference on
all four at once in at most 100 equivalent iterations.

The leakage pairs (contents without faces, styles with faces and figures) have no reference: they are there to
be looked at, for objects of the painting copied into the photo. Every pair gets a contact sheet (content,
style, reference, result) in ``bench/results/quality_sheets/``, linked from the Markdown report.

    python bench/quality.py [--images ../shared/images] [--size 512] [--references-only] [--pairs NAME ...]
    python bench/quality.py --set style_energy_power=0 --name quality_energy0   # an ablation
    python bench/quality.py --regions --size 384 --name quality_regions           # the masked case

``--regions`` runs the masked case instead (issue 21): golden_gate with Starry Night in the sky and Shipwreck
below (masks from ``demo/regions/make_masks.py``), and the two single-style runs. Each region is scored against
each style (guided Gram distance, Magenta cosine of the region's bounding box) and the whole image's layout SSIM;
the check: each region's cosine to its own style beats that region's cosine in the single-style run with the
other style.

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
    name: str
    content: str
    style: str
    reference: str | None = None
    """neural-style's output; ``None`` for the leakage pairs, which are judged by eye."""
    preserve_color: str = "none"


PAIRS = (
    Pair("tubingen_starry", "tubingen.jpg", "starry_night.jpg", "tubingen_starry.png"),
    Pair("golden_gate_starry", "golden_gate.jpg", "starry_night.jpg", "golden_gate_starry.png"),
    Pair("tubingen_shipwreck", "tubingen.jpg", "shipwreck.jpg", "tubingen_shipwreck.png"),
    Pair("tubingen_scream", "tubingen.jpg", "the_scream.jpg", "tubingen_scream.png"),
    Pair("tubingen_seated_nude", "tubingen.jpg", "seated-nude.jpg", "tubingen_seated_nude.png"),
    Pair("golden_gate_escher", "golden_gate.jpg", "escher_sphere.jpg", "golden_gate_escher.png"),
    # neural-style's -original_colors 1 against our preserve_color=luminance (the same method: chroma put back).
    Pair("tubingen_starry_original_color", "tubingen.jpg", "starry_night.jpg",
         "tubingen_starry_original_color.png", "luminance"),
    # Leakage: contents without faces, styles with faces and figures.
    Pair("golden_gate_matisse", "golden_gate.jpg", "woman-with-hat-matisse.jpg"),
    Pair("hoovertowernight_matisse", "hoovertowernight.jpg", "woman-with-hat-matisse.jpg"),
    Pair("hoovertowernight_seated_nude", "hoovertowernight.jpg", "seated-nude.jpg"),
)
#: The scoring networks: the one the loop optimises and the independent one.
SCORER_ARCHS = ("vgg19", "vgg16")


def cpu_description() -> str:
    """The CPU's model and the vector instructions torch uses on it: hairline results move with both (a Zen 3 with
    AVX2 and a Zen 4 with AVX-512 and bf16 round differently, and ``precision=auto`` differs between them)."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
            break
    return (f"{name}, {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} CPUs, "
            f"{torch.get_num_threads()} threads")


def build_scorers(cache_dir: str | None) -> dict[str, QualityScorer]:
    """Each offline VGG (fetched if missing) exported to ONNX, sharing one Magenta predictor."""
    magenta = MagentaStyleEmbedder.from_cache(cache_dir)
    scorers = {}
    for arch in SCORER_ARCHS:
        ensure_cached(arch, cache_dir)
        weights = load_vgg_weights(arch, "offline", cache_dir=cache_dir)
        features = VGGFeatures(arch, weights.state_dict, weights.preprocessing, DEFAULT_LAYERS)
        scorers[arch] = QualityScorer.from_features(features, cache_dir=cache_dir, magenta=magenta)
    return scorers


def independent_arch(engine_model: str) -> str:
    """The scoring network the loop does not optimise."""
    return next(arch for arch in SCORER_ARCHS if arch != engine_model)


def stylise(content: Image.Image, style: Image.Image | list[Image.Image], size: int, cache_dir: str | None,
            changes: dict[str, Any], preserve_color: str, controls: list[Any] | None = None) -> dict[str, Any]:
    from styletx_core.engine import StyleTransfer

    engine = StyleTransfer(device="cpu", weights="auto", cache_dir=cache_dir)
    styles = style if isinstance(style, list) else [style]
    opts = StylizeOptions(size=size, seed=0, **{"preserve_color": preserve_color, **changes})
    def progress(step: Iterate) -> None:
        if step.iteration % 25 == 0 or step.iteration == step.total_iterations:
            logging.info("  iteration %d/%d at %d×%d, loss %.4g, %.0f s", step.iteration,
                         step.total_iterations, step.width, step.height, step.loss, step.elapsed)

    start = time.perf_counter()
    result = engine.stylize(content, styles, opts, progress, controls=controls)
    return {"image": result.image, "iterations": result.iterations,
            "equivalent_iterations": round(result.equivalent_iterations, 1),
            "style_errors": {k: round(v, 4) for k, v in result.style_errors.items()},
            "style_multipliers": {k: round(v, 3) for k, v in result.style_multipliers.items()},
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


def run_pair(pair: Pair, args: argparse.Namespace, scorers: dict[str, QualityScorer]) -> dict[str, Any]:
    images, size = args.images, args.size
    content = load_image(images / "content" / pair.content, field=pair.content)
    style = load_image(images / "style" / pair.style, field=pair.style)
    entry: dict[str, Any] = {"pair": pair.name, "content": pair.content, "style": pair.style,
                             "preserve_color": pair.preserve_color, "reference": None}
    reference_scores: dict[str, QualityScores] = {}
    reference = None
    if pair.reference is not None:
        reference = load_image(images / "reference" / pair.reference, field=pair.reference)
        logging.info("%s: scoring the reference (%d×%d)", pair.name, *reference.size)
        reference_scores = {arch: scorer.score(content, [style], reference) for arch, scorer in scorers.items()}
        entry["reference"] = {arch: s.as_dict() for arch, s in reference_scores.items()}
    if args.references_only:
        return entry
    logging.info("%s: stylising at %d px with the defaults %s", pair.name, size, args.set or "")
    run = stylise(content, style, size, args.cache_dir, args.set, pair.preserve_color)
    image = run.pop("image")
    image.save(args.out / f"{args.name}_{pair.name}.png")
    entry["sheet"] = contact_sheet(args.out, args.name, pair.name, [content, style, reference, image])
    ours = {arch: scorer.score(content, [style], image) for arch, scorer in scorers.items()}
    entry["styletx"] = {arch: s.as_dict() for arch, s in ours.items()} | run | {"size": list(image.size)}
    if reference_scores:
        entry["better_than_reference"] = {arch: wins(ours[arch], reference_scores[arch]) for arch in scorers}
        judge = independent_arch(args.set.get("model", StylizeOptions().model))
        entry["judged_by"] = judge
        entry["all_four_better"] = all(entry["better_than_reference"][judge].values())
    return entry


SHEET_HEIGHT = 256


def contact_sheet(out: Path, stem: str, pair: str, images: list[Image.Image | None]) -> str:
    """content | style | reference | result, each SHEET_HEIGHT px high, as a JPEG beside the report; its path
    relative to the report."""
    tiles = [im.convert("RGB") for im in images if im is not None]
    tiles = [im.resize((round(im.width * SHEET_HEIGHT / im.height), SHEET_HEIGHT), Image.Resampling.LANCZOS)
             for im in tiles]
    sheet = Image.new("RGB", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), SHEET_HEIGHT), "white")
    x = 0
    for tile in tiles:
        sheet.paste(tile, (x, 0))
        x += tile.width + 4
    relative = Path("quality_sheets") / f"{stem}_{pair}.jpg"
    (out / relative).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out / relative, quality=85)
    return relative.as_posix()


def _score_row(pair: str, run: str, arch: str, s: dict[str, Any], iters: tuple[str, str, str]) -> str:
    return (f"| {pair} | {run} | {arch} | {s['style_distance_mean']:.4f} | {s['content_distance']:.4f} | "
            f"{s['layout_ssim']:.4f} | {s['style_cosine']:.4f} | {s['color_distance']:.2f} | {' | '.join(iters)} |")


def _pair_rows(entry: dict[str, Any]) -> list[str]:
    rows = []
    ours = entry.get("styletx")
    for arch in SCORER_ARCHS:
        if entry["reference"] is not None:
            rows.append(_score_row(entry["pair"], "reference", arch, entry["reference"][arch], ("1000", "1000", "—")))
        if ours is not None:
            iters = (str(ours["iterations"]), f"{ours['equivalent_iterations']:.1f}", f"{ours['wall_s']:.0f}")
            rows.append(_score_row(entry["pair"], "styletx", arch, ours[arch], iters))
    for arch, better in entry.get("better_than_reference", {}).items():
        labels = [label for key, label, _ in MEASURES if better[key]]
        judge = " (independent: judges the pair)" if arch == entry.get("judged_by") else ""
        rows.append(f"| {entry['pair']} | **better on** | {arch}{judge} | {len(labels)}/4: "
                    f"{', '.join(labels) or '—'} | | | | | | | |")
    return rows


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Quality benchmark (`bench/quality.py`)",
        "",
        f"{results['size']} px long side; engine {results['options']}; scores from the ONNX exports of the offline "
        "VGG19 and VGG16 (Gram relu1_1–relu5_1, content relu4_2; the network the engine does not optimise judges), "
        "layout SSIM (σ = 2 px blurred luminance), Magenta style-embedding cosine. Reference = neural-style, "
        "1000 L-BFGS iterations.",
        f"Machine: {results['machine']}.",
        "",
        "| pair | run | scorer | style dist ↓ | content dist ↓ | layout SSIM ↑ | Magenta cos ↑ | colour ΔE ↓ "
        "| iterations | equiv. iters | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in results["pairs"]:
        lines.extend(_pair_rows(entry))
    judged = [e for e in results["pairs"] if "all_four_better" in e]
    if judged:
        won = sum(e["all_four_better"] for e in judged)
        mean_iters = sum(e["styletx"]["equivalent_iterations"] for e in judged) / len(judged)
        mean_wall = sum(e["styletx"]["wall_s"] for e in judged) / len(judged)
        lines += ["", f"**{won} of {len(judged)} pairs** beat the reference on all four measures (independent "
                  f"scorer); {mean_iters:.1f} equivalent iterations and {mean_wall:.0f} s per pair on average."]
    lines += ["", "## Contact sheets", "", "content · style · reference (when there is one) · styletx", ""]
    lines += [f"### {e['pair']}\n\n![{e['pair']}]({e['sheet']})\n" for e in results["pairs"] if "sheet" in e]
    return "\n".join(lines) + "\n"


REGIONAL_CONTENT = "golden_gate.jpg"
#: (style, region) of the masked case: Starry Night in the sky, Shipwreck below.
REGIONAL_STYLES = (("starry_night.jpg", "sky"), ("shipwreck.jpg", "ground"))


def regional_masks(content: Image.Image) -> dict[str, Image.Image]:
    """The README example's masks, made by the script that ships with it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_masks", ROOT / "demo" / "regions" / "make_masks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sky = module.sky_mask(content, 0.45, 0.01)
    return {"sky": sky, "ground": Image.eval(sky, lambda value: 255 - value)}


def run_regional(args: argparse.Namespace, scorers: dict[str, QualityScorer]) -> dict[str, Any]:
    """The masked case: the regional run and each single-style run, every region scored against each style."""
    from styletx_core.regions import StyleControl
    from styletx_core.scoring import layout_ssim

    content = load_image(args.images / "content" / REGIONAL_CONTENT, field=REGIONAL_CONTENT)
    styles = [load_image(args.images / "style" / name, field=name) for name, _ in REGIONAL_STYLES]
    masks = regional_masks(content)
    controls = [StyleControl(mask=masks[region]) for _, region in REGIONAL_STYLES]
    runs = {"regional": stylise(content, styles, args.size, args.cache_dir, args.set, "none", controls)}
    for (name, _), style in zip(REGIONAL_STYLES, styles, strict=True):
        runs[f"only {name}"] = stylise(content, style, args.size, args.cache_dir, args.set, "none")
    entry: dict[str, Any] = {"content": REGIONAL_CONTENT, "styles": [dict(zip(("style", "region"), pair, strict=True))
                                                                      for pair in REGIONAL_STYLES], "runs": {}}
    for label, run in runs.items():
        image = run.pop("image")
        image.save(args.out / f"{args.name}_{label.replace(' ', '_').removesuffix('.jpg')}.png")
        scores = {arch: {region: scorer.region_scores(image, masks[region], styles).as_dict()
                         for _, region in REGIONAL_STYLES} for arch, scorer in scorers.items()}
        entry["runs"][label] = run | {"regions": scores, "layout_ssim": layout_ssim(image, content)}
    entry["checks"] = regional_checks(entry, independent_arch(args.set.get("model", StylizeOptions().model)))
    entry["sheet"] = contact_sheet(args.out, args.name, "regions", [content, masks["sky"], *[
        Image.open(args.out / f"{args.name}_{label.replace(' ', '_').removesuffix('.jpg')}.png") for label in runs]])
    return entry


def regional_checks(entry: dict[str, Any], judge: str) -> dict[str, bool]:
    """Per region: its cosine to its own style in the regional run > in the single-style run with the other."""
    checks = {}
    for index, (_, region) in enumerate(REGIONAL_STYLES):
        other = REGIONAL_STYLES[1 - index][0]
        ours = entry["runs"]["regional"]["regions"][judge][region]["style_cosine"][index]
        theirs = entry["runs"][f"only {other}"]["regions"][judge][region]["style_cosine"][index]
        checks[region] = bool(ours > theirs)
    return checks


def regional_markdown(results: dict[str, Any]) -> str:
    entry = results["regional"]
    names = [style for style, _ in REGIONAL_STYLES]
    lines = [
        "# Regional styles (`bench/quality.py --regions`)",
        "",
        f"{results['size']} px long side; engine {results['options']}; {entry['content']} with "
        + ", ".join(f"{s['style']} in the {s['region']}" for s in entry["styles"])
        + " (masks: `demo/regions/make_masks.py`). Per region: guided-Gram style distance (mean relu1_1–relu5_1) "
        "and Magenta cosine of the region's bounding box, against each style; layout SSIM of the whole image.",
        f"Machine: {results['machine']}.",
        "",
        "| run | scorer | region | " + " | ".join(f"dist to {n} ↓ | cos to {n} ↑" for n in names)
        + " | layout SSIM ↑ | wall s |",
        "|---|---|---|" + "---|---|" * len(names) + "---|---|",
    ]
    for label, run in entry["runs"].items():
        for arch, regions in run["regions"].items():
            for region, scores in regions.items():
                cells = " | ".join(f"{d:.4f} | {c:.4f}" for d, c in zip(scores["style_distance_mean"],
                                                                        scores["style_cosine"], strict=True))
                lines.append(f"| {label} | {arch} | {region} | {cells} | {run['layout_ssim']:.4f} | {run['wall_s']} |")
    passed = ", ".join(f"{region}: {'yes' if ok else 'NO'}" for region, ok in entry["checks"].items())
    lines += ["", f"Each region's cosine to its own style beats the single-style run with the other style "
              f"(independent scorer): {passed}.", "", f"![regions]({entry['sheet']})",
              "", "content · sky mask · regional · only Starry Night · only Shipwreck", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "images")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--pairs", nargs="+", default=[p.name for p in PAIRS],
                        help="subset, by name")
    parser.add_argument("--references-only", action="store_true",
                        help="score the references, skip the engine")
    parser.add_argument("--set", type=option_change, action="append", default=[], metavar="NAME=VALUE",
                        help="change an engine option (JSON value); repeatable")
    parser.add_argument("--name", default="quality", help="stem of the result files")
    parser.add_argument("--regions", action="store_true", help="run the masked case (see the module doc)")
    args = parser.parse_args()
    args.set = dict(args.set)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    scorers = build_scorers(args.cache_dir)
    results: dict[str, Any] = {
        "size": args.size,
        "options": f"defaults{changes_label(args.set)}",
        "machine": f"{cpu_description()}, torch {torch.__version__}, "
                   f"onnxruntime {scorers['vgg19'].extractor.provider} "
                   "(shared with other jobs: wall times are noisy)",
        "validation_networks": {arch: s.extractor.metadata.as_dict() for arch, s in scorers.items()},
        "pairs": [],
    }
    if args.regions:
        results["regional"] = run_regional(args, scorers)
        (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / f"{args.name}.md").write_text(regional_markdown(results))
        print(regional_markdown(results))
        return
    for pair in PAIRS:
        if pair.name in args.pairs:  # written after each pair: a long run keeps what it finished
            results["pairs"].append(run_pair(pair, args, scorers))
            (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
            (args.out / f"{args.name}.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
