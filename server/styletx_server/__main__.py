"""``styletx-server``: parse flags/environment, configure structured logging, serve until SIGTERM.

Exit status: 0 after a graceful stop, 2 for unusable settings (every problem on a line of its own, naming the
flag and variable, before any slow start-up work), 1 when serving fails later.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Sequence

from .config import ConfigError, ServerConfig, load_config

__all__ = ["main"]

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with any ``extra=`` fields (job_id, device) as keys of their own."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(config: ServerConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=config.log_level.upper(), handlers=[handler], force=True)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config, warnings = load_config(argv)
    except ConfigError as error:
        return _refuse(error)
    configure_logging(config)
    for warning in warnings:
        logging.getLogger("styletx_server").warning("%s", warning)
    from styletx_core.memory import tune_allocator

    tune_allocator()  # before any thread exists: every thread then allocates from the one heap
    from styletx_core.errors import EngineError

    from .app import serve  # after logging, so that import-time messages are formatted too

    try:
        asyncio.run(serve(config))
    except ConfigError as error:
        return _refuse(error)
    except (OSError, EngineError) as error:  # weights missing, a device failing: one line, not a traceback
        logging.getLogger("styletx_server").error("cannot serve: %s", error)
        return 1
    return 0


def _refuse(error: ConfigError) -> int:
    """Plain lines on stderr (not log records): a person or a crash-looping pod's log reads them first."""
    for problem in error.problems:
        print(f"styletx-server: error: {problem}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
