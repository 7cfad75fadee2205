"""styletx client SDK: stylise images on a styletx server (or in-process), without torch.

>>> from styletx_client import Client
>>> with Client("localhost:50051") as c:                                    # doctest: +SKIP
...     out = c.stylize("photo.jpg", ["starry.jpg", ("wave.jpg", 0.5)], size=512, seed=1)
...     out.save("out.png")

The public API is listed in ``__all__``; modules starting with ``_`` are private.
"""

from ._aio import AsyncClient
from ._client import DEFAULT_TIMEOUT, Client, LocalClient, load_backend, stylize
from ._errors import StyletxError
from ._events import (
    Accepted,
    AsyncEventStream,
    Completed,
    Event,
    EventStream,
    Preview,
    Progress,
    Quality,
    QueueUpdate,
    ResultChunk,
    Started,
    StylizeOutput,
)
from ._options import KeepAliveOptions, RetryPolicy, TLSOptions, service_config
from ._request import build_request
from ._video import VideoDone, VideoFrame, VideoStream, stylize_frames

__all__ = [
    "DEFAULT_TIMEOUT",
    "Accepted",
    "AsyncClient",
    "AsyncEventStream",
    "Client",
    "Completed",
    "Event",
    "EventStream",
    "KeepAliveOptions",
    "LocalClient",
    "Preview",
    "Progress",
    "Quality",
    "QueueUpdate",
    "ResultChunk",
    "RetryPolicy",
    "Started",
    "StyletxError",
    "StylizeOutput",
    "TLSOptions",
    "VideoDone",
    "VideoFrame",
    "VideoStream",
    "build_request",
    "load_backend",
    "service_config",
    "stylize",
    "stylize_frames",
]
