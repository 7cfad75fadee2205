"""``styletx export-onnx`` and ``styletx score``: the ONNX validation network from the command line.

Registered through the ``styletx.commands`` entry points ``register_export`` and ``register_score``; also runs
alone as ``python -m styletx_cli.onnx export-onnx|score ...``. Each sets ``func``: call
``args.func(args)``, which returns the exit status.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from styletx_client.commandline import EXIT_FAILED, DeprecatedAlias, print_error
from styletx_client.imagefile import check_writable

from styletx_core.errors import EngineError
from styletx_core.layers import SCORING_LAYERS

__all__ = ["main", "register_export", "register_score"]

_ARCHS = ("vgg19", "vgg16")
_SOURCES = ("auto", "offline", "torchvision")


def _add_network_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", choices=_ARCHS, default="vgg19", help="network (default: vgg19)")
    parser.add_argument("--vgg-weights", default="auto", metavar="SOURCE|FILE",
                        help=f"VGG weights source ({', '.join(_SOURCES)}) or a .safetensors/.pth file "
                             "(default: auto)")
    parser.add_argument("--weights", dest="vgg_weights", action=DeprecatedAlias, new="--vgg-weights")
    parser.add_argument("--pooling", choices=("max", "avg"), default="max")
    parser.add_argument("--cache-dir", default=None,
                        help="cache directory (default: $STYLETX_CACHE or ~/.cache/styletx)")


def register_export(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``export-onnx`` to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "export-onnx", help="export the VGG feature extractor to ONNX and check it against torch",
        description="Export the truncated VGG (preprocessing folded in: the input is RGB 0–1, N×3×H×W, "
                    "dynamic batch/height/width) with one named output per layer, then run the parity check "
                    "against the torch extractor on CPU.")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="FILE", help="the .onnx file")
    _add_network_options(parser)
    parser.add_argument("--layers", nargs="+", default=list(SCORING_LAYERS), metavar="LAYER",
                        help=f"outputs, by name (default: {' '.join(SCORING_LAYERS)})")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset, ≥ 18 (default: 18)")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    parser.set_defaults(func=_export)
    return parser


def register_score(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``score`` to ``subparsers``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "score", help="quality scores of images against a content and a style (JSON)",
        description="Score each IMAGE against CONTENT and STYLE with the ONNX feature extractor: style "
                    "distance (relative Frobenius distance of Gram matrices, per layer and mean), content "
                    "distance (relu4_2), colour distance (W2 of Lab statistics, ≈ ΔE), layout SSIM "
                    "(blurred luminance vs the content) and the Magenta style-embedding cosine.")
    parser.add_argument("content", type=Path)
    parser.add_argument("style", type=Path)
    parser.add_argument("images", type=Path, nargs="+", metavar="IMAGE")
    parser.add_argument("--extra-style", type=Path, action="append", default=[], metavar="FILE",
                        help="another style image, blended with equal weight (repeatable)")
    parser.add_argument("--style-scale", type=float, default=1.0,
                        help="style long side relative to the image's (default: 1.0, as neural-style)")
    parser.add_argument("--style-mask", action="append", default=[], metavar="MASK",
                        help="a regional run's mask, one per style in order (STYLE, then each --extra-style; "
                             "'-': none): adds per-region style distances and cosines against every style")
    _add_network_options(parser)
    parser.add_argument("--onnx", type=Path, default=None, metavar="FILE",
                        help="score with this export instead of the cached export of --arch/--vgg-weights")
    parser.add_argument("--no-magenta", action="store_true",
                        help="skip the Magenta style-embedding cosine (its model is fetched on first use)")
    parser.set_defaults(func=_score)
    return parser


def _load_features(args: argparse.Namespace, layers: Sequence[str]) -> Any:
    from styletx_core.vgg import VGGFeatures
    from styletx_core.weights import load_vgg_weights

    is_source = args.vgg_weights in _SOURCES
    weights = load_vgg_weights(args.arch, source=args.vgg_weights if is_source else "file",
                               path=None if is_source else args.vgg_weights, cache_dir=args.cache_dir)
    try:
        features = VGGFeatures(args.arch, weights.state_dict, weights.preprocessing, layers, args.pooling)
    except ValueError as exc:
        from styletx_core.errors import OptionError

        raise OptionError("layers", str(exc)) from None
    return features, weights


def _export(args: argparse.Namespace) -> int:
    from styletx_core.onnx_export import check_parity, export_vgg_onnx

    try:
        check_writable(args.output, "--output")
        features, weights = _load_features(args, args.layers)
        meta = export_vgg_onnx(features, args.output, opset=args.opset, weights_sha256=weights.sha256)
        result: dict[str, Any] = {"path": str(args.output), "metadata": meta.as_dict(),
                                  "weights": weights.description}
        report = None if args.no_check else check_parity(args.output, features, providers=["CPUExecutionProvider"])
        if report is not None:
            result["parity"] = report.as_dict()
    except (EngineError, OSError) as exc:
        print_error(exc)
        return EXIT_FAILED
    print(json.dumps(result, indent=2))
    return 0 if report is None or report.ok else 1


def _score(args: argparse.Namespace) -> int:
    from styletx_core.imageio import load_image
    from styletx_core.scoring import MagentaStyleEmbedder, QualityScorer

    try:
        content = load_image(args.content, field=str(args.content))
        styles = [load_image(path, field=str(path)) for path in (args.style, *args.extra_style)]
        images = [load_image(path, field=str(path)) for path in args.images]
        magenta = None if args.no_magenta else MagentaStyleEmbedder.from_cache(args.cache_dir)
        if args.onnx is not None:
            scorer = QualityScorer.from_onnx(args.onnx, magenta=magenta)
        else:
            features, _ = _load_features(args, SCORING_LAYERS)
            scorer = QualityScorer.from_features(features, cache_dir=args.cache_dir, magenta=magenta)
        scores = scorer.score_many(content, styles, images, style_scale=args.style_scale)
        regions = _region_scores(args, scorer, styles, images)
    except (EngineError, OSError) as exc:
        print_error(exc)
        return EXIT_FAILED
    result = {
        "content": str(args.content),
        "styles": [str(p) for p in (args.style, *args.extra_style)],
        "model": scorer.extractor.metadata.as_dict() | {"path": str(scorer.extractor.path),
                                                        "provider": scorer.extractor.provider},
        "images": [{"path": str(path), **score.as_dict(), **({"regions": region} if region else {})}
                   for path, score, region in zip(args.images, scores, regions, strict=True)],
    }
    print(json.dumps(result, indent=2))
    return 0


def _region_scores(args: argparse.Namespace, scorer: Any, styles: Sequence[Any],
                   images: Sequence[Any]) -> list[list[dict[str, Any]]]:
    """Per image, per masked style: its region's distances and cosines to every style (empty without masks)."""
    from styletx_core.errors import OptionError
    from styletx_core.imageio import load_image

    paths = [args.style, *args.extra_style]
    if len(args.style_mask) > len(paths):
        raise OptionError("--style-mask", f"{len(args.style_mask)} masks for {len(paths)} styles")
    masks = {i: load_image(path, field=path) for i, path in enumerate(args.style_mask) if path != "-"}
    return [[{"style": str(paths[i]), "mask": args.style_mask[i],
              **scorer.region_scores(image, mask, styles, style_scale=args.style_scale).as_dict()}
             for i, mask in masks.items()] for image in images]


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry: ``python -m styletx_cli.onnx score C S IMG``."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="styletx")
    commands = parser.add_subparsers(dest="command", required=True)
    register_export(commands)
    register_score(commands)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
