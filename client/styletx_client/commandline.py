"""What every ``styletx`` command shares, the built-in ones and the engine's (``styletx_cli``), so that they behave
alike: one error style, one set of exit codes, results on stdout, ``--json`` lines, flag names.

* Errors: ``styletx: error: <message>`` on stderr, one line. Exit 2 for usage and configuration errors, 1 for a
  failed job, 130 for Ctrl-C (:data:`EXIT_USAGE`, :data:`EXIT_FAILED`, :data:`EXIT_CANCELLED`).
* Results go to stdout (one line, or with ``--json`` one JSON object per line); progress and notices to stderr.
* A renamed flag stays as a hidden alias that prints a one-line deprecation notice (:class:`DeprecatedAlias`).

Torch-free: the client distribution runs it without the engine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from ._errors import StyletxError

__all__ = [
    "EXIT_CANCELLED", "EXIT_FAILED", "EXIT_USAGE", "CommandError", "DeprecatedAlias", "add_style_weights",
    "exit_code", "print_error", "print_json", "to_json",
]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CANCELLED = 130
#: Status codes that mean "the command line or the configuration is wrong", not "the job failed".
_USAGE_CODES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.UNIMPLEMENTED)


class CommandError(Exception):
    """A command cannot go on: ``message`` is printed in the one error style and the command exits ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def print_error(message: object) -> None:
    """``styletx: error: <message>`` on stderr, on one line."""
    print(f"styletx: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def exit_code(error: BaseException) -> int:
    """The exit status for ``error`` (after :func:`print_error`)."""
    if isinstance(error, CommandError):
        return error.code
    if isinstance(error, StyletxError):
        return EXIT_USAGE if error.code in _USAGE_CODES else EXIT_FAILED
    if isinstance(error, KeyboardInterrupt):
        return EXIT_CANCELLED
    return EXIT_FAILED


def to_json(value: Any) -> Any:
    """Dataclasses, paths and tuples as JSON values; bytes as their length (``{"bytes": n}``)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value) if f.repr}
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, bytes):
        return {"bytes": len(value)}
    if isinstance(value, Path):
        return str(value)
    return value


def print_json(kind: str, value: Any = None, **extra: Any) -> None:
    """One JSON object on one stdout line: ``{"event": kind, ...fields of value, ...extra}``."""
    fields = to_json(value) if value is not None else {}
    print(json.dumps({"event": kind, **fields, **to_json(extra)}, ensure_ascii=False), flush=True)


class DeprecatedAlias(argparse.Action):
    """A hidden old spelling of a flag: stores into the new one's ``dest`` and says, once, to use the new name."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str = "", **kwargs: Any) -> None:
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"styletx: warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_style_weights(parser: argparse.ArgumentParser | Any, what: str = "style") -> None:
    """``--style-weights W …``: the per-style blend weights, named alike in every command (old ``--weights``
    stays as a deprecated alias)."""
    parser.add_argument("--style-weights", type=float, nargs="+", metavar="W",
                        help=f"relative blend weight per {what}, in order (default: equal)")
    parser.add_argument("--weights", dest="style_weights", type=float, nargs="+", action=DeprecatedAlias,
                        new="--style-weights")
