"""Errors the engine raises. Each names what went wrong so that callers (CLI, server) can report it verbatim."""

from __future__ import annotations

__all__ = [
    "Cancelled",
    "EngineError",
    "ImageError",
    "ModelError",
    "OptionError",
    "ResourceLimitError",
    "WeightsUnavailableError",
]


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class OptionError(EngineError, ValueError):
    """A parameter is out of range or of the wrong kind. ``field`` is the option's name."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ImageError(EngineError, ValueError):
    """An image could not be decoded or is unusable (empty, too large, unsupported)."""

    def __init__(self, message: str, field: str = "image") -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ResourceLimitError(EngineError):
    """The job would exceed a memory or size budget (maps to RESOURCE_EXHAUSTED)."""


class WeightsUnavailableError(EngineError):
    """No usable weights for the requested network; the message says how to get them."""


class ModelError(EngineError):
    """A model file is missing, corrupt or does not match the expected architecture."""


class Cancelled(EngineError):  # noqa: N818 - reads as "raise Cancelled" in the callback protocol
    """Raised by a progress callback to stop the optimisation between iterations."""
