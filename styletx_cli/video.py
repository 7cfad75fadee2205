"""``styletx video IN OUT --style S``: stylise a video, consistently from frame to frame.

Registered through the ``styletx.commands`` entry point; also runs alone as
``python -m styletx_cli.video IN OUT --style S``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from styletx_core.errors import Cancelled, EngineError, OptionError

__all__ = ["main", "register"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``video`` to ``subparsers``; sets ``func`` (call ``args.func(args)`` for the exit status)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "video", help="stylise a video with temporal consistency (fast, optimize or hybrid)",
        description="Stylise every frame of IN and write OUT (H.264, IN's frame rate and audio). Optical "
                    "flow carries each stylised frame into the next, so the texture moves with the scene "
                    "instead of flickering. optimize/hybrid runs keep finished frames and resume after an "
                    "interruption.")
    parser.add_argument("input", type=Path, metavar="IN", help="source video")
    parser.add_argument("output", type=Path, metavar="OUT", help=".mp4, .mkv or .mov to write")
    styles = parser.add_mutually_exclusive_group(required=True)
    styles.add_argument("--style", type=Path, nargs="+", metavar="S", help="style image(s)")
    styles.add_argument("--preset", nargs="+", metavar="NAME",
                        help="fast mode: built-in style(s) style00 … style25 instead of images")
    parser.add_argument("--weights", type=float, nargs="+", metavar="W", help="relative weight per style")
    parser.add_argument("--mode", choices=("fast", "optimize", "hybrid"), default="fast",
                        help="fast: feed-forward network; optimize: Gatys per frame; "
                             "hybrid: fast, then refined")
    parser.add_argument("--size", type=int, metavar="PX", help="output long side (default: the source's)")
    parser.add_argument("--no-consistency", dest="consistency", action="store_false",
                        help="stylise each frame on its own (flickers; for comparison)")
    parser.add_argument("--alpha", type=float, default=0.6, help="fast: weight of the previous frame (0.6)")
    parser.add_argument("--strength", type=float, default=1.0, help="fast: style strength 0–1 (1)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="optimize/hybrid: iterations of the first frame (engine default)")
    parser.add_argument("--later-iterations", type=int, default=None,
                        help="optimize/hybrid: iterations of each later frame (half the first's)")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                        help="keep finished frames beside OUT and continue from them "
                             "(default: on for optimize/hybrid, off for fast)")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after N frames")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.set_defaults(func=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from styletx_core.video import stylize_video

    bar = tqdm(unit="frame", dynamic_ncols=True, desc=args.output.name)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        frame_fn = _frame_stylizer(args)
        resume = args.resume if args.resume is not None else args.mode != "fast"
        report = stylize_video(args.input, args.output, frame_fn, args.mode, args.consistency, progress,
                               resume, size=args.size, alpha=args.alpha, max_frames=args.max_frames)
    except OptionError as exc:
        bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (Cancelled, KeyboardInterrupt):
        bar.close()
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except (EngineError, OSError, ValueError) as exc:
        bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    bar.close()
    print(f"{args.output}: {report.frames} frames {report.size[0]}×{report.size[1]} at {report.fps:g} fps, "
          f"{report.frames / max(report.elapsed, 1e-9):.2f} frames/s"
          f"{', audio copied' if report.audio else ''}", file=sys.stderr)
    return 0


def _frame_stylizer(args: argparse.Namespace) -> Any:
    from styletx_core.fast import FastStylizer, PresetStylizer
    from styletx_core.imageio import load_image
    from styletx_core.video.frames import FastFrames, HybridFrames, OptimizeFrames, PresetFrames

    device = args.device if args.device in ("auto", "cpu", "cuda") else "auto"
    if args.preset:
        if args.mode != "fast":
            raise OptionError("preset", "presets are feed-forward styles: use --mode fast")
        return PresetFrames(PresetStylizer(device), args.preset, args.weights)
    styles = [load_image(path, field="style") for path in args.style]
    if args.mode == "fast":
        return FastFrames(FastStylizer(device), styles, args.weights, args.strength)
    from styletx_core.engine import StyleTransfer
    from styletx_core.options import StylizeOptions

    changes: dict[str, Any] = {}
    if args.iterations is not None:
        changes["iterations"] = args.iterations
    if args.weights is not None:
        changes["style_blend_weights"] = tuple(args.weights)
    opts = StylizeOptions(**changes)
    engine = StyleTransfer(device=args.device)
    if args.mode == "optimize":
        return OptimizeFrames(engine, styles, opts, args.later_iterations)
    return HybridFrames(engine, FastStylizer(device), styles, opts, args.later_iterations, alpha=args.alpha)


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry: ``python -m styletx_cli.video IN OUT --style S``."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    parser = argparse.ArgumentParser(prog="styletx")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["video", *(sys.argv[1:] if argv is None else argv)])
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
