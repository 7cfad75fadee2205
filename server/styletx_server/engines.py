"""One engine per worker: which devices the workers get, and what builds an engine for a device."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from .config import ServerConfig
from .worker import Engine

__all__ = ["EngineFactory", "load_engine_factory", "resolve_devices"]

#: Builds the engine of one worker for a device ("cpu", "cuda:0").
EngineFactory = Callable[[str], Engine]


def resolve_devices(spec: str, workers: int) -> list[str]:
    """``auto`` → every CUDA device, else ``cpu``; ``workers`` > devices shares them round-robin.

    Raises:
        ValueError: a device this host does not have (``cuda:0`` without CUDA), said in one line.
    """
    import torch

    if spec == "auto":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        devices = [f"cuda:{i}" for i in range(count)] or ["cpu"]
    else:
        devices = [d.strip() for d in spec.split(",") if d.strip()]
        for device in devices:
            _check_device(device)
    n = workers or len(devices)
    return [devices[i % len(devices)] for i in range(n)]


def _check_device(name: str) -> None:
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{name!r} is not a device name (cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{name}: this host has no CUDA device (torch {torch.__version__}, "
                             f"CUDA build {torch.version.cuda or 'none'})")
        if (device.index or 0) >= count:
            raise ValueError(f"{name}: this host has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif device.type != "cpu":
        raise ValueError(f"{name}: only cpu and cuda devices are supported")


def load_engine_factory(config: ServerConfig) -> EngineFactory:
    """``--engine-factory module:callable`` if given, else the real engine with the configured weights.

    Raises:
        ValueError: the factory cannot be imported.
    """
    if config.engine_factory:
        module, _, name = config.engine_factory.partition(":")
        try:
            factory: EngineFactory = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"{config.engine_factory!r}: {error}") from None
        return factory
    from styletx_core.engine import StyleTransfer

    def build(device: str) -> Engine:
        return StyleTransfer(device=device, weights=config.vgg_weights, weights_path=config.vgg_weights_path or None,
                             cache_dir=config.cache_dir or None)

    return build
