"""One exception for every way a job can fail, carrying its gRPC status, and the engine → status mapping.

The servicer turns a :class:`ServiceError` into ``context.abort``; the local backend raises it as is (the CLI
reads ``.code``), so both paths report the same code and message for the same mistake.
"""

from __future__ import annotations

import logging

import grpc

from styletx_core.errors import (
    Cancelled,
    ImageError,
    ModelError,
    OptionError,
    ResourceLimitError,
    WeightsUnavailableError,
)

__all__ = ["ServiceError", "from_engine_error"]

_LOGGER = logging.getLogger(__name__)


class ServiceError(Exception):
    """A job failed with ``code``; ``field`` names the request field at fault; ``retry_after`` is seconds."""

    def __init__(self, code: grpc.StatusCode, message: str, *, field: str | None = None,
                 retry_after: float | None = None) -> None:
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
    _LOGGER.error("job %s failed", job_id, exc_info=error)
    return ServiceError(grpc.StatusCode.INTERNAL, f"job {job_id} failed: {type(error).__name__}: {error}")
