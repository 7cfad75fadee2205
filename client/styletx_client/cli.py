"""``styletx``: stylise images on a server (``--server HOST:PORT``) or in this process, and more.

Subcommands: ``stylize``, ``video``, ``info``, ``health`` (each on ``--server`` or, without it, in this process
through the ``styletx.backends`` entry points), plus any registered in the ``styletx.commands`` entry-point
group (each a ``register(subparsers)`` that adds a parser with ``set_defaults(func=...)``; ``func(args)``
returns the exit code). Engine flags are generated from the ``StylizeParams`` proto descriptor, so they cannot
drift from the API. This module never imports torch: commands that need it live in ``styletx_cli`` (the server
+ engine distribution).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from ._client import Client, LocalClient, load_backend
from ._errors import StyletxError
from ._options import TLSOptions
from ._progress import ProgressReporter, contact_sheet, plot_losses, progress_bar
from ._request import PARAMS, build_request, enum_choices, param_kind

__all__ = ["build_parser", "main"]

_LOGGER = logging.getLogger("styletx.cli")
BUILTIN = ("stylize", "video", "info", "health")
#: ``styletx video --mode``: the names of styletx_core.video.frames.FRAME_MODES and the proto's video modes.
VIDEO_MODES = ("fast", "preset", "cyclegan", "optimize", "hybrid")
_SUFFIX_FORMATS = {".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff16", ".tiff": "tiff16", ".png": "png"}


def _add_connection(parser: argparse.ArgumentParser, required: bool = False) -> None:
    group = parser.add_argument_group("connection")
    env = os.environ.get("STYLETX_SERVER")
    group.add_argument("--server", default=env, required=required and not env,
                       help="HOST:PORT of a server (env STYLETX_SERVER); without: run in this process")
    group.add_argument("--timeout", type=float, default=3600.0, help="deadline of the call in seconds")
    group.add_argument("--tls", action="store_true", help="connect with TLS (system roots unless --tls-ca)")
    group.add_argument("--tls-ca", help="PEM file of the CA that signed the server's certificate")
    group.add_argument("--tls-cert", help="client certificate (PEM) for mutual TLS")
    group.add_argument("--tls-key", help="client private key (PEM) for mutual TLS")
    group.add_argument("--tls-server-name", help="expected name in the server's certificate")


def _add_engine_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per StylizeParams field; unset flags leave the server's default."""
    group = parser.add_argument_group("engine options (default: the server's; see `styletx info`)")
    for field in PARAMS.fields:
        flag = "--" + field.name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": f"param_{field.name}", "default": None}
        if field.enum_type is not None:
            kwargs["choices"] = list(enum_choices(field))
        else:
            kwargs["type"] = param_kind(field)
            kwargs["metavar"] = param_kind(field).__name__.upper()
        if field.is_repeated:
            kwargs["nargs"] = "+"
        group.add_argument(flag, help=field.name.replace("_", " "), **kwargs)


def _add_stylize(subparsers: Any) -> None:
    parser = subparsers.add_parser("stylize", help="stylise an image",
                                   description="Stylise CONTENT with STYLEs.")
    parser.add_argument("content", type=Path, help="content image")
    parser.add_argument("styles", type=Path, nargs="*", metavar="style",
                        help="style image(s) (none for preset and cyclegan modes)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output file")
    parser.add_argument("--style-weights", type=float, nargs="+", help="blend weight per style image")
    parser.add_argument("--style-mask", type=_optional_path, action="append", default=[], metavar="MASK",
                        help="greyscale mask of where a style applies; one per style, in order ('-': none)")
    parser.add_argument("--style-own-layers", type=_layer_list, action="append", default=[], metavar="L1,L2",
                        help="a style's own layers (e.g. relu4_1,relu5_1); one per style, in order ('-': default)")
    parser.add_argument("--content-strength", type=Path, metavar="MAP",
                        help="greyscale map scaling the content loss per pixel (white: keep the photo)")
    parser.add_argument("--format", choices=["png", "jpeg", "tiff16"],
                        help="output encoding (default: from the output suffix)")
    parser.add_argument("--mode", default="optimize",
                        choices=["optimize", "fast", "preset", "hybrid", "cyclegan"])
    parser.add_argument("--model-name", default="", help="network for fast/hybrid/cyclegan modes")
    parser.add_argument("--preset", default="", help="pre-trained style for preset mode (`styletx info`)")
    parser.add_argument("--strength", type=float, help="fast/preset/hybrid: style strength 0–1 (default 1)")
    parser.add_argument("--processing-size", type=int, metavar="PX",
                        help="fast/preset/hybrid: long side the network runs at (default: the output's)")
    parser.add_argument("--tile", type=int, metavar="PX", help="cyclegan: tile side (default 512)")
    parser.add_argument("--overlap", type=int, metavar="PX", help="cyclegan: tile overlap (default 64)")
    parser.add_argument("--skip-quality", action="store_true", help="do not compute quality scores")
    parser.add_argument("--preview-dir", type=Path, help="write previews here (with --preview-every N)")
    parser.add_argument("--preview-format", choices=["png", "jpeg"], default="jpeg")
    parser.add_argument("--preview-max-side", type=int, default=0, help="long side of previews (0: as is)")
    parser.add_argument("--loss-plot", type=Path, help="plot the loss curve to this file (needs matplotlib)")
    parser.add_argument("--variations", type=int, default=0, metavar="N",
                        help="make N variations (seeds s, s+1, …) and a contact sheet")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    _add_engine_flags(parser)
    _add_connection(parser)
    parser.set_defaults(func=cmd_stylize)


def _add_video(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "video", help="stylise a video with temporal consistency (on a server with --server, else here)",
        description="Stylise IN into OUT (H.264, the source's frame rate and audio) frame by frame. Optical flow "
                    "carries each stylised frame into the next, so the texture moves with the scene instead of "
                    "flickering. With --server the frames go through StylizeVideo; without, the engine runs "
                    "in this process (needs the server + engine distribution).")
    parser.add_argument("input", type=Path, metavar="IN", help="source video")
    parser.add_argument("output", type=Path, metavar="OUT", help=".mp4, .mkv or .mov to write")
    parser.add_argument("--style", type=Path, nargs="+", default=[], metavar="S", help="style image(s)")
    parser.add_argument("--weights", type=float, nargs="+", metavar="W", help="relative weight per style (preset)")
    parser.add_argument("--mode", choices=VIDEO_MODES, default="fast",
                        help="fast: feed-forward network; preset: a built-in style; cyclegan: a generator; "
                             "optimize: Gatys per frame; hybrid: fast, then refined")
    parser.add_argument("--preset", nargs="+", metavar="NAME",
                        help="built-in style(s) style00 … style25 (implies --mode preset)")
    parser.add_argument("--model-name", default="", help="cyclegan mode: the generator's name (or a file here)")
    parser.add_argument("--size", type=int, metavar="PX", help="output long side (default: the source's)")
    parser.add_argument("--no-consistency", dest="consistency", action="store_false",
                        help="stylise frames independently (no optical-flow guidance; flickers)")
    parser.add_argument("--alpha", type=float, help="feed-forward modes: weight of the previous frame (0.6)")
    parser.add_argument("--strength", type=float, help="fast: style strength 0–1 (1)")
    parser.add_argument("--processing-size", type=int, metavar="PX", help="fast/preset: network's long side")
    parser.add_argument("--iterations", type=int, help="optimize/hybrid: iterations of the first frame")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    local = parser.add_argument_group("in this process only (without --server)")
    local.add_argument("--later-iterations", type=int, help="optimize/hybrid: iterations of each later frame")
    local.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                       help="keep finished frames beside OUT and continue from them "
                            "(default: on for optimize/hybrid, off otherwise)")
    local.add_argument("--max-frames", type=int, help="stop after N frames")
    local.add_argument("--device", default="auto", help="auto, cpu or cuda")
    _add_connection(parser)
    parser.set_defaults(func=cmd_video)


def cmd_video(args: argparse.Namespace) -> int:
    """One command, two backends: StylizeVideo on ``--server``, else the local engine (``styletx.backends``
    entry point ``video``, absent from a client-only install)."""
    if args.preset and args.mode == "fast":
        args.mode = "preset"
    if not args.server:
        status: int = load_backend("video").run(args)
        return status
    return _video_remote(args)


def _video_remote(args: argparse.Namespace) -> int:
    from ._video import stylize_video_file

    if args.preset and len(args.preset) > 1:
        raise StyletxError(grpc.StatusCode.INVALID_ARGUMENT, "--preset: a server stylises with one preset")
    styles: list[Any] = list(args.style)
    if args.weights is not None:
        if len(args.weights) != len(styles):
            raise StyletxError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"--weights: {len(args.weights)} weights for {len(styles)} styles")
        styles = list(zip(styles, args.weights, strict=True))
    options = {"mode": args.mode, "preset": args.preset[0] if args.preset else None,
               "model_name": args.model_name, "consistency": args.consistency, "alpha": args.alpha,
               "strength": args.strength, "processing_size": args.processing_size, "iterations": args.iterations}
    client = _client(args)
    assert isinstance(client, Client)
    with client, progress_bar(args.output.name, "frame", args.quiet) as bar:

        def progress(done: int, expected: int) -> None:
            bar.total = expected
            bar.update(done - bar.n)

        done = stylize_video_file(client, args.input, args.output, styles, size=args.size,
                                  timeout=args.timeout, progress=progress,
                                  **{k: v for k, v in options.items() if v is not None})
    print(f"{args.output}  {done.frames} frames  {done.frames_per_second:.2f} frames/s on the server")
    return 0


def build_parser(plugins: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="styletx", description="Neural style transfer: client and tools.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_stylize(subparsers)
    _add_video(subparsers)
    info = subparsers.add_parser("info", help="server version, models, devices, limits, defaults (JSON)")
    _add_connection(info)
    info.set_defaults(func=cmd_info)
    health = subparsers.add_parser("health", help="grpc.health.v1 status of a server (exit 0 if SERVING)")
    health.add_argument("--service", default="", help="service name ('' = whole server)")
    _add_connection(health, required=True)
    health.set_defaults(func=cmd_health)
    if plugins:
        _load_plugins(subparsers)
    return parser


def _load_plugins(subparsers: Any) -> None:
    """Subcommands of other packages; a missing or broken one is skipped (client-only installs lack torch)."""
    for entry in importlib.metadata.entry_points(group="styletx.commands"):
        try:
            entry.load()(subparsers)
        except Exception as error:  # ImportError for absent extras, anything for a broken plugin
            _LOGGER.debug("skipping command %s (%s): %s", entry.name, entry.value, error)


def _client(args: argparse.Namespace) -> Client | LocalClient:
    if not args.server:
        return LocalClient(timeout=args.timeout)
    tls = None
    if args.tls or args.tls_ca or args.tls_cert:
        tls = TLSOptions(args.tls_ca, args.tls_key, args.tls_cert, args.tls_server_name)
    return Client(args.server, tls=tls, timeout=args.timeout)


def _request_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    params = {f.name: getattr(args, f"param_{f.name}") for f in PARAMS.fields}
    output_format = args.format or _SUFFIX_FORMATS.get(args.output.suffix.lower(), "png")
    return {"output_format": output_format, "preview_format": args.preview_format,
            "preview_max_side": args.preview_max_side, "mode": args.mode, "model_name": args.model_name,
            "preset": args.preset, "strength": args.strength, "processing_size": args.processing_size,
            "tile": args.tile, "overlap": args.overlap, "skip_quality": args.skip_quality,
            "style_masks": args.style_mask, "style_own_layers": args.style_own_layers,
            "content_strength": args.content_strength, **{k: v for k, v in params.items() if v is not None}}


def _optional_path(value: str) -> Path | None:
    """``--style-mask``'s value: a file, or ``-`` for a style without a mask."""
    return None if value == "-" else Path(value)


def _layer_list(value: str) -> list[str] | None:
    """``--style-layers``'s value: comma-separated layer names, or ``-`` for the default layers."""
    return None if value == "-" else [name.strip() for name in value.split(",") if name.strip()]


def _styles(args: argparse.Namespace) -> list[Any]:
    weights = args.style_weights
    if weights is not None and len(weights) != len(args.styles):
        raise StyletxError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"--style-weights: {len(weights)} weights for {len(args.styles)} styles")
    if not weights:
        return list(args.styles)
    return list(zip(args.styles, weights, strict=True))


def cmd_stylize(args: argparse.Namespace) -> int:
    kwargs = _request_kwargs(args)
    styles = _styles(args)
    with _client(args) as client:
        if args.variations:
            return _variations(client, args, styles, kwargs)
        request = build_request(args.content, styles, **kwargs)
        output = _run(client, request, args, label=args.output.name)
    output.save(args.output)
    print(f"{args.output}  seed {output.seed}  {output.width}×{output.height}  "
          f"{output.timings.get('total_seconds', 0):.1f}s")
    if output.quality is not None:
        print(f"quality: {output.quality.summary()}")
    elif output.quality_unavailable and not args.quiet:
        print(f"quality: unavailable ({output.quality_unavailable})")
    if args.loss_plot:
        plot_losses(output.history, args.loss_plot)
    return 0


def _run(client: Client | LocalClient, request: Any, args: argparse.Namespace, label: str) -> Any:
    reporter = ProgressReporter(label, args.preview_dir, args.output.stem, quiet=args.quiet)
    stream = client.stream_request(request, timeout=args.timeout)
    from ._events import collect

    try:
        return collect(stream, reporter)
    except BaseException:
        stream.cancel()
        raise
    finally:
        reporter.close()


def _variations(client: Client | LocalClient, args: argparse.Namespace, styles: list[Any],
                kwargs: dict[str, Any]) -> int:
    """N requests with seeds s, s+1, … and ``variation`` set: the engine's variations(), one per call."""
    base = kwargs.pop("seed", None)
    base = random.SystemRandom().randrange(2**31) if base is None else base
    paths = []
    for k in range(args.variations):
        request = build_request(args.content, styles, variation=True, seed=base + k, **kwargs)
        path = args.output.with_name(f"{args.output.stem}_v{k}{args.output.suffix}")
        _run(client, request, args, label=f"{path.name}").save(path)
        paths.append(path)
        print(f"{path}  seed {base + k}")
    sheet = args.output.with_name(f"{args.output.stem}_sheet.png")
    contact_sheet(paths, sheet, labels=[f"seed {base + k}" for k in range(len(paths))])
    print(f"{sheet}  contact sheet of {len(paths)} variations")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    with _client(args) as client:
        info = client.server_info(timeout=min(args.timeout, 30))
    print(json_format.MessageToJson(info, always_print_fields_with_no_presence=True))
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = client.health(args.service, timeout=min(args.timeout, 10))
    print(status)
    return 0 if status == "SERVING" else 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Builtin commands need no plugins: skip importing them (they may pull in torch, seconds of start-up).
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(plugins=first not in BUILTIN)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except StyletxError as error:
        print(f"styletx: error: {error.message} ({error.code.name})", file=sys.stderr)
        return 2 if error.code == grpc.StatusCode.INVALID_ARGUMENT else 1
    except OSError as error:  # unreadable input, unwritable output
        print(f"styletx: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
