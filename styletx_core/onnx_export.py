"""The VGG feature extractor as ONNX, and the parity gate that checks it against the torch extractor.

The exported graph is the "validation network": quality scores are computed from it with onnxruntime, so they
do not depend on the torch path that produced the image. :func:`export_vgg_onnx` hands
:class:`~styletx_core.vgg.VGGFeatures` itself to ``torch.onnx.export(dynamo=True)`` and adds only what the
exporter cannot know: the outputs in ``layers`` order, named by layer (``relu4_2``); the initializers named as
the state dict names them (``conv1_1.weight``, ``preprocess.mean``); the metadata. The parity gate compares
onnxruntime's kernels with torch's.

The input is RGB in 0–1 (N×3×H×W; batch, height and width dynamic; H, W ≥ 16) with the weights' preprocessing
(BGR flip, mean, std) in the graph. ``metadata_props`` records it too, with the weights digest, the architecture,
the pooling, the layer names and the styletx version. Opset 18 is the oldest the exporter implements; asked for
17 it converts its opset-18 graph down with the onnx C API and warns that this may fail, so 18 is the minimum.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import re
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from styletx_core import artifacts
from styletx_core.artifacts import ort_session, write_atomic
from styletx_core.errors import EngineError, ModelError
from styletx_core.layers import SCORING_LAYERS
from styletx_core.version import styletx_version
from styletx_core.vgg import Preprocessing, VGGFeatures

__all__ = [
    "DEFAULT_LAYERS",
    "DEFAULT_PROBE_SIZES",
    "FORMAT",
    "MIN_OPSET",
    "ExportMetadata",
    "OnnxFeatures",
    "ParityReport",
    "check_parity",
    "dynamo_export",
    "ensure_export",
    "export_vgg_onnx",
    "features_digest",
    "read_metadata",
    "startup_gate",
]

_LOGGER = logging.getLogger(__name__)

#: The style layers (relu1_1 … relu5_1) and the content layer, in the order of the graph's outputs.
DEFAULT_LAYERS: tuple[str, ...] = SCORING_LAYERS
#: Probe sizes (H, W) of the start-up gate: a square one and a non-square odd one (odd sizes exercise floor
#: rounding in every pooling layer).
DEFAULT_PROBE_SIZES: tuple[tuple[int, int], ...] = ((64, 64), (77, 101))
#: ``metadata_props["styletx.format"]``: bumped when the graph's contract changes.
FORMAT = "styletx-vgg-features/1"
INPUT_NAME = "image"
#: The oldest opset ``torch.onnx.export(dynamo=True)`` writes without a version conversion.
MIN_OPSET = 18
#: Max relative error allowed per layer (see :func:`check_parity`). fp32 on CPU agrees to ~1e-6; GPUs run
#: convolutions in TF32 by default, which costs about three decimal digits.
CPU_TOLERANCE = 1e-3
GPU_TOLERANCE = 2e-2


# --------------------------------------------------------------------------------------------------- export


@dataclass(frozen=True)
class ExportMetadata:
    """What an export records about itself in ``metadata_props`` (every value a string there)."""

    arch: str
    layers: tuple[str, ...]
    pooling: str
    preprocessing: Preprocessing
    digest: str
    """sha256 of the network's tensors (:func:`features_digest`): names the weights whatever their source."""
    weights_sha256: str
    """sha256 of the weights file as the weights source reports it ("" when unknown)."""
    version: str
    format: str = FORMAT

    def to_props(self) -> dict[str, str]:
        """``styletx.<field>``: strings as they are, the layers and the preprocessing as JSON."""
        return {f"styletx.{key}": value if isinstance(value, str) else json.dumps(value)
                for key, value in self.as_dict().items()}

    @classmethod
    def from_props(cls, props: Mapping[str, str], where: str) -> ExportMetadata:
        """Parse ``metadata_props``; anything missing or malformed means "not a styletx export"."""
        if props.get("styletx.format") != FORMAT:
            raise ModelError(f"{where} is not a styletx VGG feature export (format {props.get('styletx.format')!r}, "
                             f"expected {FORMAT!r}); re-create it with `styletx export-onnx`")
        try:
            pre = json.loads(props["styletx.preprocessing"])
            preprocessing = Preprocessing(bool(pre["bgr"]), float(pre["scale"]), tuple(pre["mean"]), tuple(pre["std"]))
            return cls(props["styletx.arch"], tuple(json.loads(props["styletx.layers"])), props["styletx.pooling"],
                       preprocessing, props["styletx.digest"], props.get("styletx.weights_sha256", ""),
                       props.get("styletx.version", ""))
        except (KeyError, ValueError, TypeError) as exc:
            raise ModelError(f"{where} has malformed styletx metadata ({type(exc).__name__}: {exc})") from None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"layers": list(self.layers), "preprocessing": self.preprocessing.as_dict()}


def features_digest(features: VGGFeatures) -> str:
    """sha256 over the network's tensors (name, dtype, shape, bytes), in name order.

    A file checksum depends on the container (.pth, .safetensors, a wheel); this depends only on the numbers,
    so an export and a running torch extractor can be matched whatever the weights came from.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(features.net.state_dict().items()):
        array = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
        digest.update(f"{name}|{array.dtype}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch.export, the exporter and its optimiser (onnxscript, onnx_ir) log progress at INFO and warn about
    their own internals; a library export stays silent (failures still raise)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"(torch|onnxscript|onnx_ir)(\.|$)")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def dynamo_export(module: torch.nn.Module, example: torch.Tensor, dynamic: Mapping[int, str], *, input_name: str,
                  output_names: Sequence[str], opset: int = MIN_OPSET) -> torch.onnx.ONNXProgram:
    """``torch.onnx.export(dynamo=True)`` of a one-input module, quietly, without the exporter's per-node
    debug records; the program is not written yet.

    ``dynamic`` names the input's dynamic axes (``{0: "batch"}``: the graph's ``dim_param``); ``example`` must
    be ≥ 2 along each, as ``torch.export`` specialises a size of 1.
    """
    if opset < MIN_OPSET:
        raise ModelError(f"opset {opset} is too old; use {MIN_OPSET} or newer")
    dims = {axis: torch.export.Dim(name) for axis, name in dynamic.items()}
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(module.eval(), (example,), dynamo=True, verbose=False,
                                        input_names=[input_name], output_names=list(output_names),
                                        dynamic_shapes=(dims,), opset_version=opset)
    except Exception as exc:  # torch.export and the exporter raise their own error types
        raise ModelError(f"torch.onnx.export failed: {(str(exc).strip() or type(exc).__name__).splitlines()[0]}"
                         ) from exc
    assert program is not None  # without a file the exporter returns the program
    for node in program.model.graph.all_nodes():  # its stack traces name this checkout's files and lines
        for key in [key for key in node.metadata_props if key.startswith("pkg.torch.onnx.")]:
            del node.metadata_props[key]
    return program


class _LayerTuple(torch.nn.Module):
    """``features`` returning a tuple in ``features.layers`` order, as the exporter names flattened outputs."""

    def __init__(self, features: VGGFeatures) -> None:
        super().__init__()
        self.features = features

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.features(image)
        return tuple(out[layer] for layer in self.features.layers)


def export_vgg_onnx(features: VGGFeatures, path: str | os.PathLike[str], *, opset: int = MIN_OPSET,
                    weights_sha256: str = "") -> ExportMetadata:
    """Write ``features`` (its layers, pooling and preprocessing) to ``path`` as one ONNX file, atomically.

    Args:
        features: the extractor; exported on the CPU, whatever its device.
        path: the ``.onnx`` file (VGG19 to relu5_1 is ≈ 52 MB: no external data).
        opset: ONNX opset, :data:`MIN_OPSET` or newer.
        weights_sha256: the weights file's checksum, recorded in the metadata.

    Returns:
        What the file records about itself (:func:`read_metadata` reads it back).
    """
    meta = ExportMetadata(features.arch, tuple(features.layers), _pooling_of(features), features.preprocessing,
                          features_digest(features), weights_sha256, styletx_version())
    if next(features.parameters()).device.type != "cpu":
        features = copy.deepcopy(features).cpu()
    program = dynamo_export(_LayerTuple(features), torch.rand(2, 3, 64, 64), {0: "batch", 2: "height", 3: "width"},
                            input_name=INPUT_NAME, output_names=features.layers, opset=opset)
    for value in list(program.model.graph.initializers.values()):  # features.net.conv1_1.weight → conv1_1.weight
        value.name = re.sub(r"^features\.(net\.)?", lambda m: "" if m.group(1) else "preprocess.", str(value.name))
    program.model.graph.name = f"styletx_{features.arch}_features"
    program.model.doc_string = f"{features.arch} features {list(features.layers)}; input RGB 0-1"
    program.model.metadata_props.update(meta.to_props())
    model = program.model_proto
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:  # a bug here, not bad input: still say what failed
        raise ModelError(f"the exported graph does not validate: {exc}") from None
    write_atomic(Path(path), model.SerializeToString())
    _LOGGER.info("exported %s (%s) to %s", meta.arch, ", ".join(meta.layers), path)
    return meta


def _pooling_of(features: VGGFeatures) -> str:
    pools = [m for m in features.net.children() if isinstance(m, torch.nn.MaxPool2d | torch.nn.AvgPool2d)]
    return "avg" if pools and isinstance(pools[0], torch.nn.AvgPool2d) else "max"


# --------------------------------------------------------------------------------------------------- load


def read_metadata(path: str | os.PathLike[str]) -> ExportMetadata:
    """Load and validate ``path`` as a styletx export, or raise :class:`ModelError` saying why not."""
    if not Path(path).is_file():
        raise ModelError(f"ONNX model {path} does not exist; create it with `styletx export-onnx -o {path}`")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf DecodeError, onnx ValidationError, OSError: all mean "unusable file"
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path} is not a valid ONNX model ({detail}); re-export it") from None
    meta = ExportMetadata.from_props({p.key: p.value for p in model.metadata_props}, str(path))
    inputs, outputs = [i.name for i in model.graph.input], [o.name for o in model.graph.output]
    if inputs != [INPUT_NAME] or outputs != list(meta.layers):
        raise ModelError(f"{path}: graph inputs {inputs} / outputs {outputs} do not match its metadata "
                         f"(input {INPUT_NAME!r}, outputs {list(meta.layers)})")
    return meta


def _check_matches(meta: ExportMetadata, where: str, expected: VGGFeatures | None,
                   layers: Iterable[str] | None) -> None:
    """Refuse an export whose layers, architecture, preprocessing or weights differ from what is expected."""
    missing = [layer for layer in (layers or ()) if layer not in meta.layers]
    if missing:
        raise ModelError(f"{where} lacks the layer(s) {missing} (it has {list(meta.layers)}); re-export it")
    if expected is None:
        return
    problems = []
    if meta.arch != expected.arch:
        problems.append(f"arch {meta.arch} != {expected.arch}")
    if meta.pooling != _pooling_of(expected):
        problems.append(f"pooling {meta.pooling} != {_pooling_of(expected)}")
    if meta.preprocessing != expected.preprocessing:
        problems.append("different preprocessing")
    if not problems and meta.digest != features_digest(expected):
        problems.append(f"weights digest {meta.digest[:12]}… != {features_digest(expected)[:12]}…")
    if problems:
        raise ModelError(f"{where} was exported from a different network ({'; '.join(problems)}); "
                         "re-export it from the weights in use")


class OnnxFeatures:
    """An onnxruntime session of an exported extractor: RGB 0–1 N×3×H×W float32 → ``{layer: array}``.

    Construction validates the file (:func:`read_metadata`) and, with ``expected``, that it was exported from
    the same network; every failure is a :class:`ModelError`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        expected: VGGFeatures | None = None,
        layers: Iterable[str] | None = None,
        providers: Sequence[str] | None = None,
        threads: int = 0,
    ) -> None:
        self.path = Path(path)
        self.metadata = read_metadata(self.path)
        _check_matches(self.metadata, str(self.path), expected, layers)
        self.session = ort_session(self.path, providers=providers, threads=threads)
        self.provider = self.session.get_providers()[0]

    @property
    def layers(self) -> tuple[str, ...]:
        return self.metadata.layers

    def __call__(self, image: np.ndarray, layers: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        wanted = list(layers or self.layers)
        batch = np.ascontiguousarray(image, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1] != 3 or min(batch.shape[2:]) < 16:
            raise ModelError(f"the feature extractor needs N×3×H×W with H, W ≥ 16, got {batch.shape}")
        try:
            arrays = self.session.run(wanted, {INPUT_NAME: batch})
        except Exception as exc:
            raise ModelError(f"onnxruntime failed on {self.path}: {str(exc).splitlines()[0]}") from None
        return dict(zip(wanted, arrays, strict=True))


# --------------------------------------------------------------------------------------------------- parity


@dataclass
class ParityReport:
    """The outcome of :func:`check_parity` or :func:`startup_gate`; ``as_dict()`` is what logs and the CLI carry.

    A file that could not be checked at all (missing, corrupt, another network's) is ``ok=False`` with the
    reason in ``message`` and no ``errors``.
    """

    ok: bool
    message: str
    path: str = ""
    tolerance: float = 0.0
    provider: str = ""
    sizes: list[tuple[int, int]] = field(default_factory=list)
    errors: dict[str, float] = field(default_factory=dict)
    """Max relative error per layer over all probe sizes (see :func:`check_parity`)."""
    elapsed: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def failed(cls, path: Path | None, message: str, elapsed: float = 0.0) -> ParityReport:
        """The gate's answer when the file could not be checked at all (missing, corrupt, other weights)."""
        return cls(False, message, str(path or ""), elapsed=elapsed)

    @property
    def max_error(self) -> float:
        """The worst layer's error; 0 when nothing was compared (then ``ok`` is false and ``message`` says why)."""
        return max(self.errors.values(), default=0.0)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"max_error": self.max_error}


def probe_image(height: int, width: int, seed: int = 0, batch: int = 1) -> np.ndarray:
    """An N×3×H×W image in 0–1: smooth colour ramps plus noise, so every layer sees structure and texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    ramps = np.stack([x / max(width - 1, 1), y / max(height - 1, 1),
                      0.5 + 0.5 * np.sin((x + y) / 7.0)])
    noisy = 0.6 * ramps + 0.4 * rng.random((batch, 3, height, width), dtype=np.float32)
    return noisy.astype(np.float32)


def check_parity(
    onnx_path: str | os.PathLike[str],
    features: VGGFeatures,
    *,
    sizes: Sequence[tuple[int, int]] = DEFAULT_PROBE_SIZES,
    batch: int = 1,
    tolerance: float | None = None,
    providers: Sequence[str] | None = None,
) -> ParityReport:
    """Run the export (onnxruntime) and ``features`` (torch) on probe images and compare layer by layer.

    The error of a layer is ``max|onnx − torch| / max|torch|`` over the probe: relative to the layer's peak
    activation, because an element-wise relative error is meaningless where a ReLU output is ~0.
    A file that cannot be used at all (corrupt, wrong layers, other weights) raises :class:`ModelError`;
    numbers that disagree give ``ok=False``.

    Args:
        sizes: probe (height, width) pairs, each ≥ 16.
        batch: images per probe.
        tolerance: max allowed error; default 1e-3 on CPU, 2e-2 when either side runs on a GPU.
        providers: onnxruntime providers; default :func:`~styletx_core.artifacts.ort_providers`.
    """
    start = time.perf_counter()
    onnx_features = OnnxFeatures(onnx_path, expected=features, layers=features.layers, providers=providers)
    device = next(features.parameters()).device
    on_gpu = device.type != "cpu" or onnx_features.provider != "CPUExecutionProvider"
    limit = tolerance if tolerance is not None else (GPU_TOLERANCE if on_gpu else CPU_TOLERANCE)
    errors = dict.fromkeys(features.layers, 0.0)
    for index, (height, width) in enumerate(sizes):
        probe = probe_image(height, width, seed=index, batch=batch)
        got = onnx_features(probe, features.layers)
        with torch.no_grad():
            want = features(torch.from_numpy(probe).to(device))
        for layer in features.layers:
            errors[layer] = max(errors[layer], _relative_error(got[layer], want[layer].float().cpu().numpy()))
    worst = max(errors, key=lambda k: errors[k])
    ok = all(np.isfinite(e) and e <= limit for e in errors.values())
    verdict = "within" if ok else "beyond"
    message = (f"onnxruntime ({onnx_features.provider}) vs torch ({device.type}): max relative error "
               f"{errors[worst]:.2e} at {worst}, {verdict} tolerance {limit:.0e}")
    return ParityReport(ok, message, str(onnx_path), limit, onnx_features.provider,
                        [(int(h), int(w)) for h, w in sizes], errors, time.perf_counter() - start,
                        onnx_features.metadata.as_dict())


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    if got.shape != want.shape:
        return float("inf")
    scale = float(np.abs(want).max())
    return float(np.abs(got - want).max() / max(scale, 1e-12))


# --------------------------------------------------------------------------------------------------- gate


def export_cache_path(features: VGGFeatures, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``<cache>/onnx/<arch>-<pooling>-<digest>-<layers>.onnx``: the name ties the file to the weights."""
    layers = hashlib.sha256(json.dumps(list(features.layers)).encode()).hexdigest()[:8]
    name = f"{features.arch}-{_pooling_of(features)}-{features_digest(features)[:16]}-{layers}.onnx"
    return artifacts.cache_dir(cache_dir) / "onnx" / name


def ensure_export(features: VGGFeatures, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cached export of ``features``, written first if it is missing or unreadable."""
    path = export_cache_path(features, cache_dir)
    if path.exists():
        try:
            _check_matches(read_metadata(path), str(path), features, features.layers)
            return path
        except ModelError as exc:
            _LOGGER.warning("re-exporting the ONNX cache: %s", exc)
    export_vgg_onnx(features, path)
    return path


def startup_gate(
    features: VGGFeatures,
    onnx_path: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    tolerance: float | None = None,
    providers: Sequence[str] | None = None,
) -> ParityReport:
    """The server's start-up check; never raises for a bad or missing model.

    With ``onnx_path`` the given file is checked as it is (a configured model is never rewritten); without,
    the export in the cache is used, written first when missing. A file that cannot be used at all gives
    :meth:`ParityReport.failed` with the reason as its ``message``. One log line states the result.
    """
    path: Path | None = Path(onnx_path) if onnx_path is not None else None
    start = time.perf_counter()
    try:
        if path is None:
            path = ensure_export(features, cache_dir)
        report = check_parity(path, features, tolerance=tolerance, providers=providers)
    except (EngineError, OSError) as exc:
        _LOGGER.error("ONNX parity gate FAILED: %s; refusing to serve", exc)
        return ParityReport.failed(path, str(exc), time.perf_counter() - start)
    except Exception as exc:  # e.g. CUDA out of memory in the torch pass: the gate fails closed, not loudly
        _LOGGER.exception("ONNX parity gate FAILED unexpectedly; refusing to serve")
        return ParityReport.failed(path, f"{type(exc).__name__}: {exc}", time.perf_counter() - start)
    log = _LOGGER.info if report.ok else _LOGGER.error
    log("ONNX parity gate %s: %s (%s)", "passed" if report.ok else "FAILED", report.message, path)
    return report
