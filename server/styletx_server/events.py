"""Engine progress and results → proto events. Pure functions: no I/O, no gRPC, easy to test."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping

from PIL import Image
from styletx_proto.v1 import styletx_pb2 as pb

from styletx_core.imageio import encode_image, resize_long_side
from styletx_core.progress import Iterate, StylizeResult

__all__ = ["FORMAT_ENUMS", "completed", "preview", "progress", "result_chunks"]

FORMAT_ENUMS = {"png": pb.OUTPUT_FORMAT_PNG, "jpeg": pb.OUTPUT_FORMAT_JPEG, "tiff16": pb.OUTPUT_FORMAT_TIFF16}


def progress(job_id: str, step: Iterate) -> pb.StylizeEvent:
    """One iteration; the losses map carries the per-term losses as the engine weighted them."""
    return pb.StylizeEvent(job_id=job_id, progress=pb.Progress(
        iteration=step.iteration, total_iterations=step.total_iterations, scale_index=step.scale_index,
        scale_count=step.scale_count, width=step.width, height=step.height, loss=step.loss,
        losses=step.losses, elapsed_seconds=step.elapsed, eta_seconds=step.eta,
        peak_memory_bytes=max(0, int(step.peak_memory_bytes)),
    ))


def preview(job_id: str, iteration: int, image: Image.Image, fmt: str, max_side: int) -> pb.StylizeEvent:
    """The current image, shrunk to ``max_side`` (0: as is) so previews stay far below the message limit."""
    if max_side and max(image.size) > max_side:
        image = resize_long_side(image, max_side)
    data = encode_image(image, fmt)
    return pb.StylizeEvent(job_id=job_id, preview=pb.Preview(
        iteration=iteration, image=data, format=FORMAT_ENUMS[fmt], width=image.width, height=image.height))


def result_chunks(job_id: str, data: bytes, fmt: str, size: tuple[int, int],
                  chunk_bytes: int) -> Iterator[pb.StylizeEvent]:
    """The encoded result in pieces of at most ``chunk_bytes`` (every message stays under 4 MiB)."""
    for offset in range(0, max(len(data), 1), chunk_bytes):
        yield pb.StylizeEvent(job_id=job_id, result_chunk=pb.ResultChunk(
            data=data[offset:offset + chunk_bytes], offset=offset, total_size=len(data),
            format=FORMAT_ENUMS[fmt], width=size[0], height=size[1]))


def completed(job_id: str, result: StylizeResult, data: bytes, timings: Mapping[str, float], *,
              quality: pb.Quality | None = None, quality_unavailable: str = "") -> pb.StylizeEvent:
    """Final event: where the time went, what the result cost, and its quality scores (or why none)."""
    metrics = {f"loss_{name}": float(value) for name, value in result.losses.items()}
    metrics["equivalent_iterations"] = float(result.equivalent_iterations)
    if result.elapsed > 0:
        metrics["iterations_per_second"] = result.iterations / result.elapsed
    return pb.StylizeEvent(job_id=job_id, completed=pb.Completed(
        timings=pb.Timings(**timings), metrics=metrics, seed=result.seed, iterations=result.iterations,
        result_sha256=hashlib.sha256(data).hexdigest(), quality=quality, quality_unavailable=quality_unavailable))
