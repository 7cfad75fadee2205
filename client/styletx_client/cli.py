"""``styletx``: stylise images on a server (``--server HOST:PORT``) or in this process, and more.

Subcommands: ``stylize``, ``video``, ``info``, ``health`` (each on ``--server`` or, without it, in this process
through the ``styletx.backends`` entry points), ``completion``, plus any registered in the ``styletx.commands``
entry-point group (each a ``register(subparsers)`` that adds a parser with ``set_defaults(func=...)``;
``func(args)`` returns the exit code). Job flags and their help come from the generated ``_params`` (the proto's
fields and comments, the engine's defaults), so they cannot drift from the API. Errors, exit codes and
``--json`` follow :mod:`styletx_client.commandline`. This module never imports torch (``styletx --help`` stays
fast): commands that need it live in ``styletx_cli`` (the server + engine distribution) and import it lazily.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import logging
import os
import random
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from ._client import Client, LocalClient, load_backend
from ._errors import StyletxError
from ._events import EventStream, StylizeOutput, collect
from ._options import DEFAULT_PORT, TLSOptions
from ._progress import ProgressReporter, contact_sheet, plot_losses, progress_bar
from ._request import OPTIONS, build_request
from .commandline import (
    EXIT_CANCELLED,
    EXIT_USAGE,
    CommandError,
    add_style_weights,
    exit_code,
    print_error,
    print_json,
    to_json,
)
from .imagefile import check_output, check_writable, wire_format

__all__ = ["build_parser", "main"]

_LOGGER = logging.getLogger("styletx.cli")
BUILTIN = ("stylize", "video", "info", "health", "completion")
#: ``styletx video --mode``: the names of styletx_core.video.frames.FRAME_MODES and the proto's video modes.
VIDEO_MODES = ("fast", "preset", "cyclegan", "optimize", "hybrid")
#: Options set from other flags (``-o``'s extension, ``--variations``), not flags of their own.
_NOT_FLAGS = ("output_format", "variation", "request_id")
#: ``--preview-dir`` without ``--preview-every``: a preview every this many iterations.
DEFAULT_PREVIEW_EVERY = 10


def _add_connection(parser: argparse.ArgumentParser, required: bool = False) -> None:
    group = parser.add_argument_group("connection")
    env = os.environ.get("STYLETX_SERVER")
    where = "required" if required else "without it, the job runs in this process (needs the engine)"
    group.add_argument("--server", default=env, required=required and not env, metavar="HOST[:PORT]",
                       help=f"address of a styletx server (env STYLETX_SERVER; port default {DEFAULT_PORT}; "
                            f"grpc:// and http:// are stripped, https:// turns on TLS); {where}")
    group.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS",
                       help="deadline of the call, queueing included (default: %(default)s)")
    group.add_argument("--token", default=os.environ.get("STYLETX_TOKEN"),
                       help="bearer token for a server that checks tokens (env STYLETX_TOKEN; prefer --token-file)")
    group.add_argument("--token-file", type=Path, metavar="FILE",
                       help="read the bearer token from FILE (env STYLETX_TOKEN_FILE)",
                       default=os.environ.get("STYLETX_TOKEN_FILE"))
    group.add_argument("--tls", action="store_true", help="connect with TLS (system roots unless --tls-ca)")
    group.add_argument("--tls-ca", metavar="PEM", help="CA that signed the server's certificate")
    group.add_argument("--tls-cert", metavar="PEM", help="client certificate, for mutual TLS")
    group.add_argument("--tls-key", metavar="PEM", help="client private key, for mutual TLS")
    group.add_argument("--tls-server-name", metavar="NAME", help="expected name in the server's certificate")


def _option_help(name: str) -> str:
    """The proto comment of option ``name`` with the engine's default (argparse shows the choices)."""
    spec = OPTIONS[name]
    text = spec.help.replace("%", "%%")
    if spec.default is not None:
        default = " ".join(map(str, spec.default)) if isinstance(spec.default, list) else spec.default
        text += f" (default: {default})"
    return text


def _metavar(name: str, kind: type) -> str:
    """``PX`` for sizes, ``LAYER`` for layer lists, ``NAME`` for other strings, else the type (``INT``)."""
    if name.endswith(("size", "side", "tile", "overlap")):
        return "PX"
    if kind is str:
        return "LAYER" if name.endswith("layers") else "NAME"
    return kind.__name__.upper()


def _add_option_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per job option (StylizeRequest's fields, flattened); unset flags leave the server's default."""
    group = parser.add_argument_group("job options (unset: the server's default; see `styletx info`)")
    for name, spec in OPTIONS.items():
        if name in _NOT_FLAGS:
            continue
        kwargs: dict[str, Any] = {"dest": f"option_{name}", "default": None, "help": _option_help(name)}
        if spec.kind is bool:
            kwargs["action"] = "store_true"
        elif spec.choices:
            kwargs["choices"] = list(spec.choices)
        else:
            kwargs["type"] = spec.kind
            kwargs["metavar"] = _metavar(name, spec.kind)
        if spec.repeated:
            kwargs["nargs"] = "+"
        group.add_argument("--" + name.replace("_", "-"), **kwargs)


def _add_output_style(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="machine-readable: one JSON object per line on stdout per event, then the result")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress (errors still go to stderr)")


def _add_stylize(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "stylize", help="stylise an image", description="Stylise CONTENT with STYLEs. The output's extension "
        "picks its encoding (.png, .jpg, .webp, .tif — 16-bit); the result line (or --json object) goes to "
        "stdout, progress to stderr.")
    parser.add_argument("content", type=Path, help="content image")
    parser.add_argument("styles", type=Path, nargs="*", metavar="style",
                        help="style image(s) (none for preset and cyclegan modes)")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="output file: .png, .jpg/.jpeg, .webp or .tif/.tiff (missing folders are created)")
    add_style_weights(parser)
    parser.add_argument("--style-mask", type=_optional_path, action="append", default=[], metavar="MASK",
                        help="greyscale mask of where a style applies; one per style, in order ('-': none)")
    parser.add_argument("--style-own-layers", type=_layer_list, action="append", default=[], metavar="L1,L2",
                        help="a style's own layers (e.g. relu4_1,relu5_1); one per style, in order ('-': default)")
    parser.add_argument("--content-strength", type=Path, metavar="MAP",
                        help="greyscale map scaling the content loss per pixel (white: keep the photo)")
    parser.add_argument("--region-preset", nargs=2, action="append", default=[], metavar=("PRESET", "MASK"),
                        help="--mode preset: paint PRESET inside MASK (repeatable) over --preset")
    parser.add_argument("--preview-dir", type=Path,
                        help=f"write previews here (every --preview-every iterations; default "
                             f"{DEFAULT_PREVIEW_EVERY} with this flag)")
    parser.add_argument("--loss-plot", type=Path, help="plot the loss curve to this file (needs matplotlib)")
    parser.add_argument("--variations", type=int, default=0, metavar="N",
                        help="make N variations (seeds s, s+1, …) and a contact sheet")
    _add_output_style(parser)
    _add_option_flags(parser)
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
    add_style_weights(parser)
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
    _add_output_style(parser)
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
    check_writable(args.output, "OUT")
    if not args.server:
        status: int = load_backend("video").run(args)
        return status
    return _video_remote(args)


def _video_remote(args: argparse.Namespace) -> int:
    from ._video import stylize_video_file

    if args.preset and len(args.preset) > 1:
        raise CommandError("--preset: a server stylises with one preset", EXIT_USAGE)
    styles = _weighted(args.style, args.style_weights)
    options = {"mode": args.mode, "preset": args.preset[0] if args.preset else None,
               "model_name": args.model_name, "consistency": args.consistency, "alpha": args.alpha,
               "strength": args.strength, "processing_size": args.processing_size, "iterations": args.iterations}
    client = _client(args)
    assert isinstance(client, Client)
    style = _reporter_style(args)
    with client, progress_bar(args.output.name, "frame", style != "bar") as bar:

        def progress(done: int, expected: int) -> None:
            bar.total = expected
            bar.update(done - bar.n)
            if style == "json":
                print_json("frame", None, done=done, expected=expected)
            elif style == "lines" and (done % max(1, expected // 10) == 0 or done == expected):
                print(f"{args.output.name}: frame {done}/{expected or '?'}", file=sys.stderr, flush=True)

        done = stylize_video_file(client, args.input, args.output, styles, size=args.size,
                                  timeout=args.timeout, progress=progress,
                                  **{k: v for k, v in options.items() if v is not None})
    if args.json:
        print_json("result", done, output=args.output)
    else:
        print(f"{args.output}  {done.frames} frames  {done.frames_per_second:.2f} frames/s on the server")
    return 0


def build_parser(plugins: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="styletx", description="Neural style transfer: client and tools.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_stylize(subparsers)
    _add_video(subparsers)
    info = subparsers.add_parser("info", help="server version, models, devices, limits, defaults (JSON)")
    _add_connection(info)
    info.set_defaults(func=cmd_info)
    health = subparsers.add_parser("health", help="grpc.health.v1 status of a server (exit 0 if SERVING)")
    health.add_argument("--service", default="", help="service name ('' = whole server)")
    health.add_argument("--json", action="store_true", help='print {"event": "health", "status": ...}')
    _add_connection(health, required=True)
    health.set_defaults(func=cmd_health)
    completion = subparsers.add_parser(
        "completion", help="print a shell completion script",
        description="Print a completion script for SHELL, e.g. `styletx completion bash > "
                    "~/.local/share/bash-completion/completions/styletx` or, for zsh, into a folder of $fpath "
                    "as _styletx.")
    completion.add_argument("shell", choices=["bash", "zsh", "tcsh"])
    completion.set_defaults(func=cmd_completion)
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


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        try:
            return Path(args.token_file).read_text(encoding="utf-8").strip() or None
        except OSError as error:
            raise CommandError(f"--token-file: cannot read {args.token_file}: {error.strerror}", EXIT_USAGE) from None
    return str(args.token) if args.token else None


def _client(args: argparse.Namespace) -> Client | LocalClient:
    if not args.server:
        return LocalClient(timeout=args.timeout)
    tls = None
    if args.tls or args.tls_ca or args.tls_cert:
        tls = TLSOptions(args.tls_ca, args.tls_key, args.tls_cert, args.tls_server_name)
    return Client(args.server, tls=tls, timeout=args.timeout, token=_token(args))


def _request_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The job's options from the flags; the output's extension picks the encoding to ask for."""
    options = {name: getattr(args, f"option_{name}") for name in OPTIONS if name not in _NOT_FLAGS}
    if args.preview_dir is not None and options["preview_every"] is None:
        options["preview_every"] = DEFAULT_PREVIEW_EVERY
    regions = {"style_masks": args.style_mask, "style_own_layers": args.style_own_layers,
               "content_strength": args.content_strength,
               "region_presets": [(name, Path(mask)) for name, mask in args.region_preset]}
    return {"output_format": wire_format(args.output), **{k: v for k, v in options.items() if v is not None},
            **{k: v for k, v in regions.items() if v}}


def _optional_path(value: str) -> Path | None:
    """``--style-mask``'s value: a file, or ``-`` for a style without a mask."""
    return None if value == "-" else Path(value)


def _layer_list(value: str) -> list[str] | None:
    """``--style-own-layers``'s value: comma-separated layer names, or ``-`` for the default layers."""
    return None if value == "-" else [name.strip() for name in value.split(",") if name.strip()]


def _weighted(styles: list[Any], weights: list[float] | None) -> list[Any]:
    if weights is not None and len(weights) != len(styles):
        raise CommandError(f"--style-weights: {len(weights)} weights for {len(styles)} styles", EXIT_USAGE)
    return list(styles) if not weights else list(zip(styles, weights, strict=True))


def _check_paths(args: argparse.Namespace) -> None:
    """Everything a job will write, checked before it runs (a finished job is never lost to a bad path)."""
    check_output(args.output, "--output")
    if args.loss_plot:  # matplotlib picks its format (png, svg, pdf, ...)
        check_writable(args.loss_plot, "--loss-plot")
    if args.preview_dir:
        check_writable(args.preview_dir / "preview", "--preview-dir")


def cmd_stylize(args: argparse.Namespace) -> int:
    _check_paths(args)
    kwargs = _request_kwargs(args)
    styles = _weighted(args.styles, args.style_weights)
    with _client(args) as client:
        if args.variations:
            return _variations(client, args, styles, kwargs)
        request = build_request(args.content, styles, **kwargs)
        output = _run(client, request, args, label=args.output.name)
    output.save(args.output)
    _print_result(args, output)
    if args.loss_plot:
        plot_losses(output.history, args.loss_plot)
    return 0


def _print_result(args: argparse.Namespace, output: StylizeOutput) -> None:
    """The result on stdout: one line, or with --json one object (the image's path instead of its bytes)."""
    if args.json:
        fields = to_json(output)
        fields.pop("data", None)
        print_json("result", None, output=args.output, **fields)
        return
    print(f"{args.output}  seed {output.seed}  {output.width}×{output.height}  "
          f"{output.timings.get('total_seconds', 0):.1f}s")
    if output.quality is not None:
        print(f"quality: {output.quality.summary()}")
    elif output.quality_unavailable and not args.quiet:
        print(f"quality: unavailable ({output.quality_unavailable})")


def _reporter_style(args: argparse.Namespace) -> str:
    if args.json:
        return "json"
    if args.quiet:
        return "quiet"
    return "bar" if sys.stderr.isatty() else "lines"


def _run(client: Client | LocalClient, request: Any, args: argparse.Namespace, label: str) -> StylizeOutput:
    """Run one job with progress; Ctrl-C cancels it (see :func:`_cancel_on_interrupt`)."""
    reporter = ProgressReporter(label, args.preview_dir, args.output.stem, style=_reporter_style(args))
    stream = client.stream_request(request, timeout=args.timeout)
    try:
        with _cancel_on_interrupt(stream) as interrupted:
            try:
                return collect(stream, reporter)
            except StyletxError:
                if not interrupted:
                    raise
        last = reporter.last
        where = f" at iteration {last.iteration} of {last.total_iterations}" if last else " before it started"
        raise CommandError(f"cancelled{where}", EXIT_CANCELLED)
    except BaseException:
        stream.cancel()
        raise
    finally:
        reporter.close()


@contextlib.contextmanager
def _cancel_on_interrupt(stream: EventStream) -> Iterator[list[bool]]:
    """The first Ctrl-C cancels the job (the stream then ends, and the caller reports where it stopped); a second
    one exits at once. Yields a list that is non-empty once interrupted."""
    interrupted: list[bool] = []

    def handle(signum: int, frame: Any) -> None:
        if interrupted:
            os._exit(EXIT_CANCELLED)
        interrupted.append(True)
        stream.cancel()

    if threading.current_thread() is not threading.main_thread():  # only the main thread may take signals
        yield interrupted
        return
    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def _variations(client: Client | LocalClient, args: argparse.Namespace, styles: list[Any],
                kwargs: dict[str, Any]) -> int:
    """N requests with seeds s, s+1, … and ``variation`` set: the engine's variations(), one per call."""
    base = kwargs.pop("seed", None)
    base = random.SystemRandom().randrange(2**31) if base is None else base
    paths = []
    for k in range(args.variations):
        request = build_request(args.content, styles, variation=True, seed=base + k, **kwargs)
        path = args.output.with_name(f"{args.output.stem}_v{k}{args.output.suffix}")
        output = _run(client, request, args, label=f"{path.name}")
        output.save(path)
        paths.append(path)
        if args.json:
            print_json("variation", None, output=path, seed=base + k)
        else:
            print(f"{path}  seed {base + k}")
    sheet = args.output.with_name(f"{args.output.stem}_sheet.png")
    contact_sheet(paths, sheet, labels=[f"seed {base + k}" for k in range(len(paths))])
    if args.json:
        print_json("result", None, output=sheet, variations=paths)
    else:
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
    if args.json:
        print_json("health", None, status=status, server=client.target)
    else:
        print(status)
    return 0 if status == "SERVING" else 1


def cmd_completion(args: argparse.Namespace) -> int:
    """A completion script covering every command installed here (shtab, from the parser itself)."""
    try:
        import shtab
    except ImportError:
        raise CommandError("completion scripts need shtab: pip install 'styletx-client[cli]'", EXIT_USAGE) from None
    print(shtab.complete(build_parser(), shell=args.shell))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; every failure ends in one ``styletx: error:`` line (see commandline)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Builtin commands need no plugins: skip importing them (fast start-up even where they are installed).
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(plugins=first not in BUILTIN or first == "completion")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "func", None) is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("styletx: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except BrokenPipeError:  # `styletx info | head`: the reader had enough; quiet, like other tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except (CommandError, StyletxError) as error:
        if exit_code(error) == EXIT_CANCELLED:
            print(f"styletx: {error.message}", file=sys.stderr)
        else:
            print_error(error.message)
        return exit_code(error)
    except OSError as error:  # unreadable input, unwritable output
        print_error(f"{error.strerror or error}: {error.filename}" if error.filename else error)
        return exit_code(error)


if __name__ == "__main__":
    sys.exit(main())
