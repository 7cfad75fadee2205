"""The VGG feature extractor as ONNX, and the parity gate that checks it against the torch extractor.

The exported graph is the "validation network": quality scores are computed from it with onnxruntime, so they
do not depend on the torch path that produced the image. It is written node by node with ``onnx.helper``
rather than traced, because a VGG is five op types and a hand-built graph

* needs neither ``onnxscript`` (torch's default exporter) nor the deprecated TorchScript exporter,
* gives every output and initializer the names the torch side uses (``relu4_2``, ``conv1_1.weight``),
* is an independent re-implementation, which is what a parity check should compare against.

The input is RGB in 0–1 (N×3×H×W, every dimension dynamic); the weights' preprocessing (BGR flip, mean, std)
is folded in as ``Gather``/``Sub``/``Div`` nodes and also recorded in the metadata, with the weights digest,
the architecture, the pooling, the layer names and the styletx version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

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
    "ExportMetadata",
    "OnnxFeatures",
    "ParityReport",
    "check_parity",
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
#: Max relative error allowed per layer (see :func:`check_parity`). fp32 on CPU agrees to ~1e-6; GPUs run
#: convolutions in TF32 by default, which costs about three decimal digits.
CPU_TOLERANCE = 1e-3
GPU_TOLERANCE = 2e-2


class WeightsLike(Protocol):
    """What :func:`export_vgg_onnx` needs of :class:`styletx_core.weights.LoadedWeights`."""

    @property
    def state_dict(self) -> Mapping[str, torch.Tensor]: ...
    @property
    def preprocessing(self) -> Preprocessing: ...
    @property
    def sha256(self) -> str: ...


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
        return {
            "styletx.format": self.format,
            "styletx.arch": self.arch,
            "styletx.layers": json.dumps(list(self.layers)),
            "styletx.pooling": self.pooling,
            "styletx.preprocessing": json.dumps(self.preprocessing.as_dict()),
            "styletx.digest": self.digest,
            "styletx.weights_sha256": self.weights_sha256,
            "styletx.version": self.version,
        }

    @classmethod
    def from_props(cls, props: Mapping[str, str], where: str) -> ExportMetadata:
        """Parse ``metadata_props``; anything missing or malformed means "not a styletx export"."""
        if props.get("styletx.format") != FORMAT:
            found = props.get("styletx.format")
            raise ModelError(f"{where} is not a styletx VGG feature export (format {found!r}, expected "
                             f"{FORMAT!r}); re-create it with `styletx export-onnx`")
        try:
            pre = json.loads(props["styletx.preprocessing"])
            return cls(
                arch=props["styletx.arch"],
                layers=tuple(json.loads(props["styletx.layers"])),
                pooling=props["styletx.pooling"],
                preprocessing=Preprocessing(bool(pre["bgr"]), float(pre["scale"]), tuple(pre["mean"]),
                                            tuple(pre["std"])),
                digest=props["styletx.digest"],
                weights_sha256=props.get("styletx.weights_sha256", ""),
                version=props.get("styletx.version", ""),
            )
        except (KeyError, ValueError, TypeError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
            raise ModelError(f"{where} has malformed styletx metadata ({detail})") from None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["layers"] = list(self.layers)
        data["preprocessing"] = self.preprocessing.as_dict()
        return data


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


def export_vgg_onnx(
    model: VGGFeatures | WeightsLike,
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    layers: Sequence[str] = DEFAULT_LAYERS,
    pooling: str = "max",
    opset: int = 17,
    weights_sha256: str = "",
) -> ExportMetadata:
    """Write ``model`` as an ONNX feature extractor to ``path`` (atomically) and return what it records.

    Args:
        model: a :class:`VGGFeatures` (its own layers and pooling are used), or loaded weights plus ``arch``.
        path: the ``.onnx`` file to write; a single file (VGG19 to relu5_1 is ≈ 80 MB, far below 2 GB).
        arch, layers, pooling: only with weights; ignored for a :class:`VGGFeatures`.
        opset: ONNX opset, 17 or newer.
        weights_sha256: the weights file's checksum to record; taken from ``model.sha256`` for weights.
    """
    if opset < 17:
        raise ModelError(f"opset {opset} is too old; use 17 or newer")
    features = _as_features(model, arch, layers, pooling)
    if not weights_sha256 and not isinstance(model, VGGFeatures):
        weights_sha256 = model.sha256
    meta = ExportMetadata(features.arch, tuple(features.layers), _pooling_of(features),
                          features.preprocessing, features_digest(features), weights_sha256,
                          styletx_version())
    onnx_model = _build_model(features, meta, opset)
    try:
        onnx.checker.check_model(onnx_model, full_check=True)
    except onnx.checker.ValidationError as exc:  # a bug here, not bad input: still say what failed
        raise ModelError(f"the exported graph does not validate: {exc}") from None
    write_atomic(Path(path), onnx_model.SerializeToString())
    _LOGGER.info("exported %s (%s) to %s", meta.arch, ", ".join(meta.layers), path)
    return meta


def _as_features(model: VGGFeatures | WeightsLike, arch: str | None, layers: Sequence[str],
                 pooling: str) -> VGGFeatures:
    if isinstance(model, VGGFeatures):
        return model
    if arch is None:
        raise ModelError("exporting from weights needs the architecture (arch='vgg16' or 'vgg19')")
    try:
        return VGGFeatures(arch, model.state_dict, model.preprocessing, layers, pooling)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ModelError(f"cannot build {arch} from these weights: {str(exc).splitlines()[0]}") from None


def _pooling_of(features: VGGFeatures) -> str:
    pools = [m for m in features.net.children() if isinstance(m, torch.nn.MaxPool2d | torch.nn.AvgPool2d)]
    return "avg" if pools and isinstance(pools[0], torch.nn.AvgPool2d) else "max"


def _build_model(features: VGGFeatures, meta: ExportMetadata, opset: int) -> onnx.ModelProto:
    """Preprocessing nodes, then one node per VGG module; the requested relus are graph outputs."""
    nodes, inits = _preprocess_nodes(features)
    x, block = "preprocessed", 1
    outputs: list[onnx.ValueInfoProto] = []
    channels = 3
    for name, module in features.net.named_children():
        if isinstance(module, torch.nn.Conv2d):
            inits += [_initializer(f"{name}.weight", module.weight),
                      _initializer(f"{name}.bias", module.bias)]
            nodes.append(helper.make_node("Conv", [x, f"{name}.weight", f"{name}.bias"], [name], name=name,
                                          kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]))
            channels = module.out_channels
        elif isinstance(module, torch.nn.ReLU):
            nodes.append(helper.make_node("Relu", [x], [name], name=name))
        else:
            op = "MaxPool" if isinstance(module, torch.nn.MaxPool2d) else "AveragePool"
            nodes.append(helper.make_node(op, [x], [name], name=name, kernel_shape=[2, 2], strides=[2, 2]))
            block += 1
        x = name
        if name in features.layers:
            outputs.append(helper.make_tensor_value_info(
                name, TensorProto.FLOAT, ["batch", channels, f"height_{block}", f"width_{block}"]))
    outputs.sort(key=lambda info: features.layers.index(info.name))
    image = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, "height", "width"])
    graph = helper.make_graph(nodes, f"styletx_{features.arch}_features", [image], outputs, inits)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="styletx",
                              producer_version=meta.version,
                              doc_string=f"{features.arch} features {list(features.layers)}; input RGB 0-1")
    # The oldest IR version that carries this opset, so older onnxruntime builds load the file too.
    model.ir_version = helper.find_min_ir_version_for(opsets)
    helper.set_model_props(model, meta.to_props())
    return model


def _preprocess_nodes(features: VGGFeatures) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """The same arithmetic as :meth:`VGGFeatures.preprocess`, with its own float32 constants."""
    nodes: list[onnx.NodeProto] = []
    inits = [_initializer("preprocess.mean", features.mean), _initializer("preprocess.std", features.std)]
    x = INPUT_NAME
    if features.preprocessing.bgr:
        inits.append(numpy_helper.from_array(np.array([2, 1, 0], dtype=np.int64), "preprocess.bgr_index"))
        nodes.append(helper.make_node("Gather", [x, "preprocess.bgr_index"], ["bgr"], name="to_bgr", axis=1))
        x = "bgr"
    nodes += [
        helper.make_node("Sub", [x, "preprocess.mean"], ["centred"], name="subtract_mean"),
        helper.make_node("Div", ["centred", "preprocess.std"], ["preprocessed"], name="divide_std"),
    ]
    return nodes, inits


def _initializer(name: str, tensor: torch.Tensor | torch.nn.Module | None) -> TensorProto:
    assert isinstance(tensor, torch.Tensor), name
    return numpy_helper.from_array(tensor.detach().to("cpu", torch.float32).numpy(), name)


# --------------------------------------------------------------------------------------------------- load


def read_metadata(path: str | os.PathLike[str]) -> ExportMetadata:
    """Load and validate ``path`` as a styletx export, or raise :class:`ModelError` saying why not."""
    model = _load_model(Path(path))
    meta = ExportMetadata.from_props({p.key: p.value for p in model.metadata_props}, str(path))
    outputs = [o.name for o in model.graph.output]
    inputs = [i.name for i in model.graph.input]
    if inputs != [INPUT_NAME] or outputs != list(meta.layers):
        raise ModelError(f"{path}: graph inputs {inputs} / outputs {outputs} do not match its metadata "
                         f"(input {INPUT_NAME!r}, outputs {list(meta.layers)})")
    return meta


def _load_model(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise ModelError(f"ONNX model {path} does not exist; create it with `styletx export-onnx -o {path}`")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf DecodeError, onnx ValidationError, OSError: all mean "unusable file"
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path} is not a valid ONNX model ({detail}); re-export it") from None
    return model


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
    """The outcome of :func:`check_parity`; ``as_dict()`` is what GetServerInfo and logs carry."""

    ok: bool
    tolerance: float
    provider: str
    sizes: list[tuple[int, int]]
    errors: dict[str, float]
    """Max relative error per layer over all probe sizes (see :func:`check_parity`)."""
    elapsed: float
    path: str = ""
    message: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def failed(cls, path: Path | None, message: str) -> ParityReport:
        """The gate's answer when the file could not be checked at all (missing, corrupt, other weights)."""
        return cls(ok=False, tolerance=0.0, provider="", sizes=[], errors={}, elapsed=0.0, path=str(path or ""),
                   message=message)

    @property
    def max_error(self) -> float:
        return max(self.errors.values(), default=float("inf"))

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["sizes"] = [list(size) for size in self.sizes]
        data["max_error"] = self.max_error
        return data


def probe_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A 1×3×H×W image in 0–1: smooth colour ramps plus noise, so every layer sees structure and texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    ramps = np.stack([x / max(width - 1, 1), y / max(height - 1, 1),
                      0.5 + 0.5 * np.sin((x + y) / 7.0)])
    noisy = 0.6 * ramps + 0.4 * rng.random((3, height, width), dtype=np.float32)
    return noisy[None].astype(np.float32)


def check_parity(
    onnx_path: str | os.PathLike[str],
    features: VGGFeatures,
    *,
    sizes: Sequence[tuple[int, int]] = DEFAULT_PROBE_SIZES,
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
        probe = probe_image(height, width, seed=index)
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
    return ParityReport(ok, limit, onnx_features.provider, [(int(h), int(w)) for h, w in sizes], errors,
                        time.perf_counter() - start, str(onnx_path), message,
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
    try:
        if path is None:
            path = ensure_export(features, cache_dir)
        report = check_parity(path, features, tolerance=tolerance, providers=providers)
    except (EngineError, OSError) as exc:
        _LOGGER.error("ONNX parity gate FAILED: %s; refusing to serve", exc)
        return ParityReport.failed(path, str(exc))
    except Exception as exc:  # e.g. CUDA out of memory in the torch pass: the gate fails closed, not loudly
        _LOGGER.exception("ONNX parity gate FAILED unexpectedly; refusing to serve")
        return ParityReport.failed(path, f"{type(exc).__name__}: {exc}")
    log = _LOGGER.info if report.ok else _LOGGER.error
    log("ONNX parity gate %s: %s (%s)", "passed" if report.ok else "FAILED", report.message, path)
    return report
