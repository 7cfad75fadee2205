"""styletx client SDK: stylise images on a styletx server (or in-process), without torch.

>>> from styletx_client import Client
>>> with Client("localhost") as c:                                          # doctest: +SKIP
...     out = c.stylize("photo.jpg", ["starry.jpg", ("wave.jpg", 0.5)], size=512, seed=1)
...     out.save("out.webp")                      # encoded by extension; out.image is a PIL image

Job options are typed keywords (:class:`JobOptions`, generated from the proto with its comments). The public
API is listed in ``__all__``; modules starting with ``_`` are private; :mod:`styletx_client.imagefile` and
:mod:`styletx_client.commandline` are shared with the engine's commands.
"""

import importlib.metadata

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
from ._request import JobOptions, build_request
from ._video import VideoDone, VideoFrame, VideoStream, stylize_frames

try:
    __version__ = importlib.metadata.version("styletx-client")
except importlib.metadata.PackageNotFoundError:  # a source checkout that was not installed
    __version__ = "0+unknown"

__all__ = [
    "DEFAULT_TIMEOUT",
    "Accepted",
    "AsyncClient",
    "AsyncEventStream",
    "Client",
    "Completed",
    "Event",
    "EventStream",
    "JobOptions",
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
    "__version__",
    "build_request",
    "load_backend",
    "service_config",
    "stylize",
    "stylize_frames",
]
