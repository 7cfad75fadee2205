"""The static part of GetServerInfo: version, weights, devices, limits and defaults."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path

from styletx_proto.v1 import styletx_pb2 as pb

from styletx_core.options import CHOICES
from styletx_core.version import styletx_version

from .config import ServerConfig
from .limits import Limits
from .validation import defaults

__all__ = ["build_info"]


def build_info(devices: Sequence[str], limits: Limits, modes: Iterable[int],
               config: ServerConfig) -> pb.GetServerInfoResponse:
    """The static part of GetServerInfo: version, models, devices, limits, defaults."""
    version = styletx_version()
    models = [pb.ModelInfo(name=arch, modes=[pb.MODE_OPTIMIZE], weights=config.vgg_weights,
                           available=_weights_available(arch, config)) for arch in CHOICES["model"]]
    device_infos = [_device_info(name) for name in dict.fromkeys(devices)]
    wire_limits = pb.Limits(
        max_pixels=limits.max_pixels, max_receive_message_bytes=limits.max_receive_message_bytes,
        max_send_message_bytes=limits.max_send_message_bytes, max_styles=limits.max_styles,
        queue_capacity=limits.queue_capacity, workers=limits.workers, max_size=limits.max_size,
        max_chunk_bytes=limits.max_chunk_bytes, max_frame_bytes=limits.max_frame_bytes,
        video_buffer_frames=limits.video_buffer_frames, max_request_pixels=limits.max_request_pixels,
        admission_memory_bytes=limits.admission_memory_bytes, decode_timeout_seconds=limits.decode_timeout,
        result_ttl_seconds=limits.result_ttl, calls_per_connection=limits.calls_per_connection,
        video_slice_seconds=limits.video_slice, video_idle_seconds=limits.video_idle)
    return pb.GetServerInfoResponse(version=version, models=models, devices=device_infos, limits=wire_limits,
                                    defaults=defaults(),
                                    modes=[pb.Mode.ValueType(m) for m in sorted(modes)])


def _weights_available(arch: str, config: ServerConfig) -> bool:
    if config.vgg_weights == "file":
        return bool(config.vgg_weights_path) and Path(config.vgg_weights_path).is_file()
    try:
        from styletx_core.weights import cached_entries

        return any(e.present for e in cached_entries(config.cache_dir or None, check=False)
                   if e.weights.spec.arch == arch)
    except Exception:  # an unreadable cache only means "not known to be available"
        return False


def _device_info(name: str) -> pb.DeviceInfo:
    if name.startswith("cuda"):
        import torch

        props = torch.cuda.get_device_properties(torch.device(name))
        return pb.DeviceInfo(name=name, description=props.name, memory_bytes=props.total_memory)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    return pb.DeviceInfo(name=name, description=f"{platform.processor() or platform.machine()}, "
                         f"{os.cpu_count()} cores", memory_bytes=memory)
