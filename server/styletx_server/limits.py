"""What one server accepts, torch-free: ``styletx-server --help`` builds its defaults from here without
loading the engine."""

from __future__ import annotations

from dataclasses import dataclass

from styletx_core.geometry import DEFAULT_MAX_PIXELS

__all__ = ["Limits"]


@dataclass(frozen=True)
class Limits:
    """What one server accepts; published in ``GetServerInfoResponse.limits``."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_request_pixels: int = 64_000_000
    """Decoded pixels of one request's images together (:mod:`.admission`)."""
    admission_memory_bytes: int = 4 * 1024**3
    """Memory admitted work (queued, running, kept for retries) may hold (:mod:`.admission`)."""
    decode_timeout: float = 10.0
    """Seconds a request's images may take to decode."""
    result_ttl: float = 300.0
    """Seconds a finished job's outcome is kept for a retry with its request_id (:mod:`.idempotency`)."""
    detach_grace: float = 30.0
    """Seconds a job with a request_id keeps running after its callers are gone, waiting for a retry."""
    max_size: int = 2048
    max_styles: int = 8
    queue_capacity: int = 16
    workers: int = 1
    max_receive_message_bytes: int = 64 * 1024 * 1024
    max_send_message_bytes: int = 4 * 1024 * 1024
    max_chunk_bytes: int = 1024 * 1024
    max_frame_bytes: int = 4 * 1024 * 1024 - 64 * 1024
    """Largest encoded video frame, both ways: a frame message must stay under gRPC's default 4 MiB."""
    calls_per_connection: int = 16
    """Stylize/StylizeVideo calls one client connection may run at once; more wait (:mod:`.peers`)."""
    video_linger: float = 0.25
    """Seconds a video session with no frame keeps its worker (when no other work waits) before parking."""
    video_idle: float = 60.0
    """Seconds a video stream may send no frame (or read no reply) before it is ended (DEADLINE_EXCEEDED)."""
    video_slice: float = 2.0
    """Seconds of frames after which a video session gives its worker to waiting work (docs: fairness)."""
    video_buffer_frames: int = 4
    """Frames one StylizeVideo stream may have on the server (received, not yet sent back)."""
    max_batch: int = 0
    """Most compatible OPTIMIZE jobs a worker optimises together (0: auto — 32 on a GPU, 1 on a CPU, and on
    either as many as the memory plan fits without changing any job's plan)."""
    batch_wait: float = 0.005
    """Seconds a worker with a batchable job waits for compatible companions before it starts."""
