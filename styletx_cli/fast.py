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
                        help="PNG or JPEG to write")
    parser.add_argument("--weights", type=float, nargs="+", metavar="W",
                        help="relative weight per style (or per preset); default equal")
    parser.add_argument("--strength", type=float, default=1.0,
                        help="0–1: from the content's own style (0) to the given style (1); default 1")
    parser.add_argument("--preserve-color", choices=("none", "luminance", "histogram"), default="none",
                        help="keep the content's colours (default: none)")
    parser.add_argument("--size", type=int, metavar="PX", help="output long side (default: the content's)")
    parser.add_argument("--processing-size", type=int, metavar="PX",
                        help="long side the network runs at (e.g. 384: faster, softer on big images)")
    parser.add_argument("--preset", nargs="+", metavar="NAME",
                        help="built-in style(s) style00 … style25 instead of STYLE images")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.set_defaults(func=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    try:
        start = time.perf_counter()
        image = _stylize(args)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        image.save(args.output)
    except OptionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (EngineError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    print(f"{args.output} ({image.width}×{image.height}, {elapsed:.2f} s)", file=sys.stderr)
    return 0


def _stylize(args: argparse.Namespace) -> Any:
    from styletx_core.fast import FastStylizer, PresetStylizer
    from styletx_core.imageio import load_image

    if bool(args.preset) == bool(args.styles):
        raise OptionError("styles", "give STYLE image(s) or --preset NAME, not both and not neither")
    content = load_image(args.content, field="content")
    common = {"weights": args.weights, "strength": args.strength, "preserve_color": args.preserve_color,
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
