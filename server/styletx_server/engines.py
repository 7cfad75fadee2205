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
    """``auto`` → every CUDA device, else ``cpu``; ``workers`` > devices shares them round-robin."""
    if spec == "auto":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        devices = [f"cuda:{i}" for i in range(count)] or ["cpu"]
    else:
        devices = [d.strip() for d in spec.split(",") if d.strip()]
    n = workers or len(devices)
    return [devices[i % len(devices)] for i in range(n)]


def load_engine_factory(config: ServerConfig) -> EngineFactory:
    """``--engine-factory module:callable`` if given, else the real engine with the configured weights."""
    if config.engine_factory:
        module, _, name = config.engine_factory.partition(":")
        factory: EngineFactory = getattr(importlib.import_module(module), name)
        return factory
    from styletx_core.engine import StyleTransfer

    def build(device: str) -> Engine:
        return StyleTransfer(device=device, weights=config.weights, weights_path=config.weights_path or None,
                             cache_dir=config.cache_dir or None)

    return build
