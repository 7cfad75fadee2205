"""Named CycleGAN generators for the service: a models directory plus the cached pretrained ones.

A models directory holds ``NAME.pth`` / ``NAME.pt`` / ``NAME.safetensors`` (any layout ``loaders`` knows) or
``NAME.onnx`` files, each optionally with ``NAME.json`` ``{"description": …, "licence": …}``. Pretrained
generators prepared by ``fetch_vintagify`` appear under their names ("vintage") unless the directory has a
file of the same name. Loaded models are kept in a small LRU so a busy server does not reload per request.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelError
from .loaders import TORCH_SUFFIXES, load_generator
from .onnx import OnnxGenerator
from .pretrained import PRETRAINED, cached_pretrained
from .tiling import Generator

__all__ = ["GeneratorRegistry", "ModelInfo"]

_LOGGER = logging.getLogger(__name__)
_SUFFIXES = (*TORCH_SUFFIXES, ".onnx")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class ModelInfo:
    """What GetServerInfo lists for one generator."""

    name: str
    path: Path
    format: str  # "torch" or "onnx"
    description: str
    licence: str


class GeneratorRegistry:
    """Generators by name. Thread-safe; ``get`` loads on first use and caches up to ``max_loaded`` models.

    Args:
        models_dir: directory of model files (may be ``None`` or missing: then only pretrained ones).
        cache_dir: the weights cache holding pretrained generators (default ``$STYLETX_CACHE``).
        device: where torch generators are put (``"cpu"``, ``"cuda"``, …).
        include_pretrained: list cached pretrained generators too.
        max_loaded: how many loaded generators to keep in memory.
    """

    def __init__(self, models_dir: str | os.PathLike[str] | None = None, *,
                 cache_dir: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu",
                 include_pretrained: bool = True, max_loaded: int = 4) -> None:
        self.models_dir = Path(models_dir) if models_dir is not None else None
        self.cache_dir = cache_dir
        self.device = torch.device(device)
        self.include_pretrained = include_pretrained
        self.max_loaded = max(1, max_loaded)
        self._loaded: OrderedDict[tuple[str, Path, float], Generator] = OrderedDict()
        self._lock = threading.Lock()

    def _scan(self) -> dict[str, ModelInfo]:
        """Rescanned on every call so models dropped into the directory appear without a restart."""
        found: dict[str, ModelInfo] = {}
        if self.include_pretrained:
            for name, spec in PRETRAINED.items():
                path = cached_pretrained(name, self.cache_dir)
                if path is not None:
                    found[name] = ModelInfo(name, path, "torch", spec.description, spec.licence)
        if self.models_dir is not None and self.models_dir.is_dir():
            files = sorted(p for p in self.models_dir.iterdir() if p.suffix in _SUFFIXES and p.is_file())
            for path in sorted(files, key=lambda p: _SUFFIXES.index(p.suffix)):
                if not _NAME.fullmatch(path.stem):
                    _LOGGER.warning("ignoring %s: model names are letters, digits, '.', '_' and '-'", path)
                    continue
                if path.stem not in found or found[path.stem].path.parent != self.models_dir:
                    found[path.stem] = self._describe(path)
        return found

    @staticmethod
    def _describe(path: Path) -> ModelInfo:
        meta: dict[str, str] = {}
        sidecar = path.with_suffix(".json")
        if sidecar.is_file():
            try:
                meta = {k: str(v) for k, v in json.loads(sidecar.read_text()).items()}
            except (ValueError, AttributeError):
                _LOGGER.warning("ignoring unreadable %s", sidecar)
        fmt = "onnx" if path.suffix == ".onnx" else "torch"
        return ModelInfo(path.stem, path, fmt, meta.get("description", ""), meta.get("licence", ""))

    def names(self) -> list[str]:
        """Sorted names of the available generators."""
        return sorted(self._scan())

    def infos(self) -> list[ModelInfo]:
        """Every available generator with its description (no model is loaded)."""
        return [info for _, info in sorted(self._scan().items())]

    def info(self, name: str) -> ModelInfo:
        """One generator's description; ``ModelError`` naming the available ones if unknown."""
        found = self._scan()
        if name not in found:
            raise ModelError(f"unknown CycleGAN model {name!r}; available: {', '.join(sorted(found)) or 'none'}")
        return found[name]

    def get(self, name: str) -> Generator:
        """The loaded generator ``name`` (``CycleGANGenerator`` on ``device``, or ``OnnxGenerator``)."""
        info = self.info(name)
        key = (name, info.path, info.path.stat().st_mtime)  # a replaced file is reloaded
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            gen: Generator = (OnnxGenerator(info.path) if info.format == "onnx"
                              else load_generator(info.path, self.device))
            self._loaded[key] = gen
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)
            return gen
