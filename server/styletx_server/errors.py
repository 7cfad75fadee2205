"""One exception for every way a job can fail, carrying its gRPC status, and the engine → status mapping.

The servicer turns a :class:`ServiceError` into ``context.abort``; the local backend raises it as is (the CLI
reads ``.code``), so both paths report the same code and message for the same mistake.
"""

from __future__ import annotations

import logging

import grpc

from styletx_core.errors import (
    Cancelled,
    EngineError,
    ImageError,
    ModelError,
    OptionError,
    ResourceLimitError,
    WeightsUnavailableError,
)

__all__ = ["ServiceError", "from_engine_error"]

_LOGGER = logging.getLogger(__name__)


#: Longest message sent back. Messages may quote the request (an unknown layer name); the message travels
#: twice in the trailers (grpc-message and the rich status), and trailers over a client's 8 KiB metadata
#: limit would replace the whole answer with an unhelpful "Stream removed".
MAX_MESSAGE_CHARS = 1024


def _shorten(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return f"{message[:MAX_MESSAGE_CHARS - 40]}… ({len(message)} characters, shortened)"


class ServiceError(Exception):
    """A job failed with ``code``; ``field`` names the request field at fault; ``retry_after`` is seconds."""

    def __init__(self, code: grpc.StatusCode, message: str, *, field: str | None = None,
                 retry_after: float | None = None) -> None:
        message = _shorten(message)
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after

    @classmethod
    def invalid(cls, field: str, message: str) -> ServiceError:
        """INVALID_ARGUMENT whose message starts with the field name, so it reads well without details."""
        return cls(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {message}", field=field)

    @property
    def details(self) -> dict[str, str]:
        """What travels as trailing metadata (and what the SDK exposes as ``StyletxError.details``)."""
        details: dict[str, str] = {}
        if self.field:
            details["styletx-field"] = self.field
        if self.retry_after is not None:
            milliseconds = str(max(1, round(self.retry_after * 1000)))
            details["retry-after-ms"] = milliseconds
            # gRPC's own retry machinery honours this hint between attempts (gRFC A6, "pushback").
            details["grpc-retry-pushback-ms"] = milliseconds
        return details


#: Messages of out-of-memory errors that PyTorch raises as a plain RuntimeError (CPU allocator, old CUDA).
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "failed to allocate memory")


def _out_of_memory(error: BaseException) -> bool:
    """torch.OutOfMemoryError (matched by name: this module does not import torch), MemoryError, or a
    RuntimeError whose message is an allocator's; any of them fails this job only, never the server."""
    if isinstance(error, MemoryError) or any(c.__name__ == "OutOfMemoryError" for c in type(error).__mro__):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error).lower() for m in _OOM_MESSAGES)


def from_engine_error(error: BaseException, job_id: str) -> ServiceError:
    """Map an exception out of the engine to a status; anything unexpected is INTERNAL and logged in full."""
    if isinstance(error, ServiceError):
        return error
    if isinstance(error, OptionError):
        return ServiceError.invalid(f"params.{error.field}", error.message)
    if isinstance(error, ImageError):
        return ServiceError.invalid(error.field, error.message)
    if isinstance(error, ResourceLimitError):
        return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
    if isinstance(error, WeightsUnavailableError | ModelError):
        return ServiceError(grpc.StatusCode.FAILED_PRECONDITION, str(error))
    if isinstance(error, Cancelled):
        return ServiceError(grpc.StatusCode.CANCELLED, f"job {job_id} was cancelled")
    if _out_of_memory(error):
        _LOGGER.warning("job %s ran out of memory: %s", job_id, error)
        return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"job {job_id} ran out of memory on its device ({error}); "
                            "retry with a smaller size, fewer styles or another replica")
    if isinstance(error, EngineError):  # e.g. NumericalError: the engine's message already says what and why
        _LOGGER.warning("job %s failed: %s: %s", job_id, type(error).__name__, error)
        return ServiceError(grpc.StatusCode.INTERNAL, f"job {job_id} failed: {error}")
    _LOGGER.error("job %s failed", job_id, exc_info=error)
    return ServiceError(grpc.StatusCode.INTERNAL, f"job {job_id} failed: {type(error).__name__}: {error}")
