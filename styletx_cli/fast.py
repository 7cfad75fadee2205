"""``styletx fast``: instant feed-forward stylisation with any style image(s) or a built-in preset.

Registered through the ``styletx.commands`` entry point; also runs alone as
``python -m styletx_cli.fast CONTENT STYLE -o OUT``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from styletx_client import StyletxError
from styletx_client.commandline import EXIT_FAILED, EXIT_USAGE, add_style_weights, print_error, print_json
from styletx_client.imagefile import check_output, save_image

from styletx_core.errors import EngineError, OptionError

__all__ = ["main", "register"]

_LOGGER = logging.getLogger(__name__)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``fast`` to ``subparsers``; sets ``func`` (call ``args.func(args)`` for the exit status)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "fast", help="instant stylisation with a feed-forward network (any style image, or --preset)",
        description="Stylise CONTENT in one forward pass of Magenta's arbitrary-style network (Ghiasi et al. "
                    "2017), blending one or more STYLE images, or with one of 26 built-in presets. Runs at "
                    "the content's native resolution unless --size/--processing-size say otherwise.")
    parser.add_argument("content", type=Path, metavar="CONTENT", help="the photo to stylise")
    parser.add_argument("styles", type=Path, nargs="*", metavar="STYLE", help="style image(s) to blend")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="FILE",
                        help="image to write: .png, .jpg/.jpeg, .webp or .tif/.tiff (missing folders are created)")
    add_style_weights(parser, "style (or preset)")
    parser.add_argument("--strength", type=float, default=1.0,
                        help="0–1: from the content's own style (0) to the given style (1); default 1")
    parser.add_argument("--preserve-color", choices=("none", "luminance", "histogram"), default="none",
                        help="keep the content's colours (default: none)")
    parser.add_argument("--size", type=int, metavar="PX", help="output long side (default: the content's)")
    parser.add_argument("--processing-size", type=int, metavar="PX",
                        help="long side the network runs at (e.g. 384: faster, softer on big images)")
    parser.add_argument("--preset", nargs="+", metavar="NAME",
                        help="built-in style(s) style00 … style25 instead of STYLE images")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the network runs (default: auto, CUDA when present)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.set_defaults(func=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    """Stylise and write; the result line (stdout) gives the time from the image's loading to its writing, the
    networks' loading included (the process's start-up, torch's import, is not)."""
    try:
        check_output(args.output, "--output")
        start = time.perf_counter()
        image = _stylize(args)
        save_image(image, args.output)
    except (OptionError, StyletxError) as exc:
        print_error(exc.message if isinstance(exc, StyletxError) else exc)
        return EXIT_USAGE
    except (EngineError, OSError, ValueError) as exc:
        print_error(exc)
        return EXIT_FAILED
    seconds = time.perf_counter() - start
    if args.json:
        print_json("result", None, output=args.output, width=image.width, height=image.height, seconds=seconds)
    else:
        print(f"{args.output} ({image.width}×{image.height}, {seconds:.2f} s with model loading)")
    return 0


def _stylize(args: argparse.Namespace) -> Any:
    from styletx_core.fast import FastStylizer, PresetStylizer
    from styletx_core.imageio import load_image

    if bool(args.preset) == bool(args.styles):
        raise OptionError("styles", "give STYLE image(s) or --preset NAME, not both and not neither")
    content = load_image(args.content, field="content")
    common = {"weights": args.style_weights, "strength": args.strength, "preserve_color": args.preserve_color,
              "size": args.size, "processing_size": args.processing_size}
    if args.preset:
        return PresetStylizer(args.device).stylize(content, args.preset, **common)
    styles = [load_image(path, field="style") for path in args.styles]
    return FastStylizer(args.device).stylize(content, styles, **common)


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry: ``python -m styletx_cli.fast CONTENT STYLE -o OUT``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(prog="styletx")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["fast", *(sys.argv[1:] if argv is None else argv)])
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
