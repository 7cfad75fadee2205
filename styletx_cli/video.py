"""The local backend of ``styletx video`` (without ``--server``): stylise a video in this process.

The command itself (its flags, and the switch to StylizeVideo on ``--server``) is the client's
(:mod:`styletx_client.cli`); it finds this backend through the ``styletx.backends`` entry point ``video``, so a
client-only install reports the missing engine instead of lacking the command. The frame stylisers come from
the same factory as the server's (:func:`styletx_core.video.frames.frame_stylizer`). Also runs alone as
``python -m styletx_cli.video IN OUT --style S``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from styletx_client.commandline import print_error, print_json

from styletx_core.errors import Cancelled, EngineError, OptionError

__all__ = ["LocalVideo", "main"]


class LocalVideo:
    """``run(args)`` → exit status: 0, 1 (engine or I/O error), 2 (bad option), 130 (interrupted)."""

    def run(self, args: argparse.Namespace) -> int:
        from tqdm import tqdm

        from styletx_core.video import stylize_video
        from styletx_core.video.frames import pipeline_mode

        bar = tqdm(unit="frame", dynamic_ncols=True, desc=args.output.name,
                   disable=args.quiet or args.json or not sys.stderr.isatty())

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            frame_fn = _frame_stylizer(args)
            resume = args.resume if args.resume is not None else args.mode in ("optimize", "hybrid")
            report = stylize_video(args.input, args.output, frame_fn, pipeline_mode(args.mode), args.consistency,
                                   progress, resume, size=args.size, alpha=_alpha(args),
                                   max_frames=args.max_frames)
        except OptionError as exc:
            return _fail(bar, exc, 2)
        except (Cancelled, KeyboardInterrupt):
            bar.close()
            print("styletx: cancelled; run the same command again to resume", file=sys.stderr)
            return 130
        except (EngineError, OSError, ValueError) as exc:
            return _fail(bar, exc, 1)
        bar.close()
        if args.json:
            print_json("result", None, output=args.output, frames=report.frames, width=report.size[0],
                       height=report.size[1], fps=report.fps, seconds=report.elapsed, audio=bool(report.audio))
        else:
            print(f"{args.output}: {report.frames} frames {report.size[0]}×{report.size[1]} at {report.fps:g} "
                  f"fps, {report.frames / max(report.elapsed, 1e-9):.2f} frames/s"
                  f"{', audio copied' if report.audio else ''}")
        return 0


def _fail(bar: Any, error: BaseException, status: int) -> int:
    bar.close()
    print_error(error)
    return status


def _alpha(args: argparse.Namespace) -> float:
    return 0.6 if args.alpha is None else float(args.alpha)


def _frame_stylizer(args: argparse.Namespace) -> Any:
    """The mode's frame styliser, its networks built here on first use."""
    from styletx_core.imageio import load_image
    from styletx_core.options import StylizeOptions
    from styletx_core.video.frames import frame_stylizer

    if args.preset and args.mode != "preset":
        raise OptionError("preset", "presets are feed-forward styles: use --mode fast or preset")
    if not args.style and args.mode in ("fast", "optimize", "hybrid"):
        raise OptionError("style", f"--mode {args.mode} needs at least one --style image")
    changes: dict[str, Any] = {}
    if args.iterations is not None:
        changes["iterations"] = args.iterations
    if args.style_weights is not None:
        changes["style_blend_weights"] = tuple(args.style_weights)
    styles = [load_image(path, field="style") for path in args.style]
    return frame_stylizer(args.mode, _networks(args.device), styles, StylizeOptions(**changes),
                          presets=args.preset or (), model_name=args.model_name,
                          strength=1.0 if args.strength is None else args.strength,
                          processing_size=args.processing_size, alpha=_alpha(args),
                          later_iterations=args.later_iterations)


def _networks(device: str) -> Any:
    from styletx_core.video.frames import Networks

    def engine() -> Any:
        from styletx_core.engine import StyleTransfer

        return StyleTransfer(device=device)

    def fast() -> Any:
        from styletx_core.fast import FastStylizer

        return FastStylizer(_onnx_device(device))

    def preset() -> Any:
        from styletx_core.fast import PresetStylizer

        return PresetStylizer(_onnx_device(device))

    def generator(name: str) -> Any:
        from .cyclegan import resolve_generator

        return resolve_generator(name, None, device)

    return Networks(engine=engine, fast=fast, preset=preset, generator=generator)


def _onnx_device(device: str) -> str:
    """``cuda:1`` and the like are torch's; onnxruntime takes auto, cpu or cuda."""
    return device if device in ("auto", "cpu", "cuda") else "auto"


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry: ``python -m styletx_cli.video IN OUT --style S`` (the ``styletx video`` command)."""
    from styletx_client.cli import main as cli_main

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    return cli_main(["video", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
