"""Small requests and images for the service tests, and a polling helper."""

from __future__ import annotations

import io
import time
from typing import Any

from PIL import Image
from styletx_proto.v1 import styletx_pb2 as pb
from traffic import encode  # the one encoder of test and bench images

__all__ = ["encode", "kind", "png", "request", "wait_for"]


def png(size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 120, 40)) -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", size, color)
    image.putpixel((1, 1), (0, 0, 0))
    image.save(buffer, "PNG")
    return buffer.getvalue()


def request(iterations: int = 3, **params: Any) -> pb.StylizeRequest:
    params = {"size": 64, "min_size": 32, "iterations": iterations, "coarse_iterations": 2, **params}
    return pb.StylizeRequest(
        content=png(),
        styles=[pb.Style(image=png((32, 32), (10, 60, 220)))],
        params=pb.StylizeParams(**params),
    )


def kind(event: pb.StylizeEvent) -> str:
    return str(event.WhichOneof("event"))


def wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.005)
    return bool(predicate())
