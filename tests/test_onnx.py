"""ONNX export of the VGG extractor and its parity gate (random weights: offline and fast)."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from support.warnings_check import quiet_recorder

from styletx_core.errors import ModelError
from styletx_core.onnx_export import (
    DEFAULT_LAYERS,
    MIN_OPSET,
    OnnxFeatures,
    ParityReport,
    check_parity,
    ensure_export,
    export_vgg_onnx,
    features_digest,
    read_metadata,
    startup_gate,
)
from styletx_core.vgg import CAFFE_PREPROCESSING, TORCHVISION_PREPROCESSING, VGGFeatures, make_layers

#: (H, W): square, non-square, non-square with odd sides (floor rounding in every pooling layer).
PARITY_SIZES = [(64, 64), (96, 128), (77, 101)]


def random_features(arch: str, seed: int = 0, layers: tuple[str, ...] = DEFAULT_LAYERS,
                    pooling: str = "max") -> VGGFeatures:
    torch.manual_seed(seed)
    state = make_layers(arch, "relu5_4" if arch == "vgg19" else "relu5_3").state_dict()
    preprocessing = CAFFE_PREPROCESSING if arch == "vgg19" else TORCHVISION_PREPROCESSING
    return VGGFeatures(arch, state, preprocessing, layers, pooling)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[VGGFeatures, Path]]:
    directory = tmp_path_factory.mktemp("onnx")
    result = {}
    for arch in ("vgg16", "vgg19"):
        features = random_features(arch)
        path = directory / f"{arch}.onnx"
        export_vgg_onnx(features, path, weights_sha256="ab" * 32)
        result[arch] = (features, path)
    return result


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_parity_cpu_three_sizes(exported: dict[str, tuple[VGGFeatures, Path]], arch: str) -> None:
    features, path = exported[arch]
    report = check_parity(path, features, sizes=PARITY_SIZES, providers=["CPUExecutionProvider"])
    print(f"{arch} max relative error per layer: {json.dumps(report.errors)}")
    assert report.ok, report.message
    assert report.provider == "CPUExecutionProvider"
    assert set(report.errors) == set(DEFAULT_LAYERS)
    assert report.max_error < 1e-5  # fp32 on both sides: far inside the 1e-3 gate


def test_outputs_are_named_and_dynamic(exported: dict[str, tuple[VGGFeatures, Path]]) -> None:
    features, path = exported["vgg19"]
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == list(DEFAULT_LAYERS)  # the layers' order, not the network's
    assert model.opset_import[0].version >= MIN_OPSET
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "", "height", "width"]
    for output in model.graph.output:  # no size of the tracing example (2×3×64×64) was baked in
        shape = output.type.tensor_type.shape.dim
        assert shape[0].dim_param == "batch" and shape[2].dim_param and shape[3].dim_param
    initializers = {init.name for init in model.graph.initializer}
    assert {"conv1_1.weight", "conv5_1.bias", "preprocess.mean", "preprocess.std"} <= initializers
    assert not [name for name in initializers if name.startswith("features.")]
    assert not model.graph.initializer[0].data_location  # one file: the weights are inside, not external data
    assert ".py" not in str([p.value for node in model.graph.node for p in node.metadata_props])  # no source paths
    batch = np.random.default_rng(0).random((2, 3, 40, 56), dtype=np.float32)
    got = OnnxFeatures(path, providers=["CPUExecutionProvider"])(batch)
    with torch.no_grad():
        want = features(torch.from_numpy(batch))
    for layer in DEFAULT_LAYERS:
        assert got[layer].shape == tuple(want[layer].shape)
    assert got["relu5_1"].shape == (2, 512, 2, 3)


def test_metadata_records_preprocessing_and_weights(exported: dict[str, tuple[VGGFeatures, Path]]) -> None:
    features, path = exported["vgg19"]
    meta = read_metadata(path)
    assert meta.arch == "vgg19" and meta.layers == DEFAULT_LAYERS and meta.pooling == "max"
    assert meta.preprocessing == CAFFE_PREPROCESSING
    assert meta.digest == features_digest(features)
    assert meta.weights_sha256 == "ab" * 32
    assert meta.version
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert props["styletx.format"] == "styletx-vgg-features/1" and json.loads(props["styletx.layers"]) == list(DEFAULT_LAYERS)


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_both_poolings_odd_sizes_and_batch_of_two(tmp_path: Path, pooling: str) -> None:
    """Odd sides round down in every pooling layer (77 → 38 → 19 → 9 → 4); onnxruntime must do the same."""
    layers = ("relu2_1", "relu3_1", "relu5_1", "relu4_2")
    features = random_features("vgg16", layers=layers, pooling=pooling)
    path = tmp_path / f"{pooling}.onnx"
    export_vgg_onnx(features, path)
    report = check_parity(path, features, sizes=[(77, 101), (33, 47), (16, 16)], batch=2,
                          providers=["CPUExecutionProvider"])
    assert report.ok and report.max_error < 1e-5, report.message
    assert list(report.errors) == list(layers) and read_metadata(path).pooling == pooling
    got = OnnxFeatures(path, providers=["CPUExecutionProvider"])(np.zeros((2, 3, 77, 101), np.float32))
    assert got["relu5_1"].shape == (2, 512, 4, 6) and got["relu2_1"].shape == (2, 128, 38, 50)


def test_export_is_quiet(tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """The exporter's optimiser logs each pass at INFO (onnx_ir); library code prints, logs and warns nothing
    (torch's DEBUG-level structured trace records are left alone: they are written only under TORCH_TRACE)."""
    features = random_features("vgg16", layers=("relu1_1",))
    with caplog.at_level(logging.INFO), quiet_recorder() as caught:
        export_vgg_onnx(features, tmp_path / "quiet.onnx")
    assert capfd.readouterr() == ("", "")
    assert [r.name for r in caplog.records if not r.name.startswith("styletx_core")] == []
    assert caught == [], [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught]
    assert logging.getLogger("onnx_ir").level == logging.NOTSET  # the levels it raised are restored


def test_old_opsets_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="opset 17 is too old; use 18"):
        export_vgg_onnx(random_features("vgg16", layers=("relu1_1",)), tmp_path / "x.onnx", opset=17)
    assert not (tmp_path / "x.onnx").exists()


# ----------------------------------------------------------------------------------------------- bad files


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "missing"])
def test_unusable_file_is_a_clear_error(exported: dict[str, tuple[VGGFeatures, Path]], tmp_path: Path,
                                        damage: str) -> None:
    features, good = exported["vgg16"]
    bad = tmp_path / "bad.onnx"
    if damage == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    elif damage == "garbage":
        bad.write_bytes(np.random.default_rng(1).bytes(4096))
    elif damage == "empty":
        bad.write_bytes(b"")
    with pytest.raises(ModelError, match=str(bad)):
        check_parity(bad, features)


def test_foreign_onnx_model_is_refused(tmp_path: Path) -> None:
    node = helper.make_node("Relu", ["image"], ["relu1_1"])
    info = [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1, 3, 4, 4])
            for name in ("image", "relu1_1")]
    model = helper.make_model(helper.make_graph([node], "g", info[:1], info[1:]),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "foreign.onnx"))
    with pytest.raises(ModelError, match="not a styletx VGG feature export"):
        OnnxFeatures(tmp_path / "foreign.onnx")


def test_wrong_layer_set_is_refused(tmp_path: Path) -> None:
    features = random_features("vgg16", layers=("relu1_1", "relu2_1"))
    export_vgg_onnx(features, tmp_path / "short.onnx")
    with pytest.raises(ModelError, match=r"lacks the layer\(s\) \['relu3_1'"):
        OnnxFeatures(tmp_path / "short.onnx", layers=DEFAULT_LAYERS)
    with pytest.raises(ModelError, match="lacks the layer"):
        check_parity(tmp_path / "short.onnx", random_features("vgg16"))


def test_mismatched_weights_are_refused(exported: dict[str, tuple[VGGFeatures, Path]]) -> None:
    _, path = exported["vgg16"]
    with pytest.raises(ModelError, match="weights digest"):
        check_parity(path, random_features("vgg16", seed=1))
    with pytest.raises(ModelError, match="arch vgg16 != vgg19"):
        check_parity(path, random_features("vgg19"))


def _tamper(source: Path, target: Path) -> None:
    """Change one conv weight but keep the metadata: only the numbers can reveal it."""
    model = onnx.load(str(source))
    for index, init in enumerate(model.graph.initializer):
        if init.name == "conv2_1.weight":
            array = numpy_helper.to_array(init).copy()
            array *= 1.5
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(array, init.name))
    onnx.save(model, str(target))


def test_tampered_numbers_fail_the_gate(exported: dict[str, tuple[VGGFeatures, Path]], tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    features, good = exported["vgg16"]
    _tamper(good, tmp_path / "tampered.onnx")
    report = check_parity(tmp_path / "tampered.onnx", features, sizes=[(32, 32)])
    assert not report.ok and report.errors["relu1_1"] < 1e-5 and report.errors["relu2_1"] > 0.1
    with caplog.at_level(logging.ERROR, logger="styletx_core.onnx_export"):
        gate = startup_gate(features, tmp_path / "tampered.onnx")
    assert isinstance(gate, ParityReport) and not gate.ok and gate.max_error > 0.1
    assert "ONNX parity gate FAILED" in caplog.text


def test_gate_passes_and_reports(exported: dict[str, tuple[VGGFeatures, Path]]) -> None:
    features, path = exported["vgg16"]
    report = startup_gate(features, path)
    assert report.ok and report.provider == "CPUExecutionProvider" and report.path == str(path)
    assert report.metadata["arch"] == "vgg16" and set(report.errors) == set(DEFAULT_LAYERS)
    assert 0 < report.max_error < report.tolerance == 1e-3
    assert json.loads(json.dumps(report.as_dict()))["max_error"] == report.max_error  # logs / the CLI carry it


def test_gate_never_raises_for_a_missing_file(tmp_path: Path) -> None:
    report = startup_gate(random_features("vgg16"), tmp_path / "nope.onnx")
    assert not report.ok and "does not exist" in report.message and report.path == str(tmp_path / "nope.onnx")
    assert report.errors == {} and report.max_error == 0.0


@pytest.mark.slow
def test_gate_exports_into_the_cache_once(tmp_path: Path) -> None:
    features = random_features("vgg16", layers=("relu1_1", "relu2_1"))
    report = startup_gate(features, cache_dir=tmp_path)
    assert report.ok, report.message
    path = ensure_export(features, tmp_path)
    assert path.parent == tmp_path / "onnx" and Path(report.path) == path
    stamp = path.stat().st_mtime_ns
    assert ensure_export(features, tmp_path) == path and path.stat().st_mtime_ns == stamp
    path.write_bytes(b"corrupt")  # a damaged cache is repaired, not trusted
    assert startup_gate(features, cache_dir=tmp_path).ok


def test_cli_export_with_a_weights_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from styletx_cli.onnx import main

    torch.manual_seed(3)
    torch.save(make_layers("vgg16", "relu5_3").state_dict(), tmp_path / "w.pth")
    status = main(["export-onnx", "-o", str(tmp_path / "cli.onnx"), "--arch", "vgg16",
                   "--vgg-weights", str(tmp_path / "w.pth"), "--layers", "relu1_1", "relu2_1"])
    out = json.loads(capsys.readouterr().out)
    assert status == 0 and out["parity"]["ok"] and out["metadata"]["layers"] == ["relu1_1", "relu2_1"]
    assert len(out["metadata"]["weights_sha256"]) == 64
    assert main(["export-onnx", "-o", str(tmp_path / "x.onnx"), "--vgg-weights", str(tmp_path / "none.pth")]) == 1
    assert "error:" in capsys.readouterr().err


def _cuda_onnxruntime() -> bool:
    import onnxruntime as ort

    return torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_onnxruntime(), reason="needs a CUDA GPU and onnxruntime-gpu; "
                    "test_parity_cpu_three_sizes is the CPU twin")
def test_parity_cuda(exported: dict[str, tuple[VGGFeatures, Path]]) -> None:
    features, path = exported["vgg19"]
    report = check_parity(path, copy.deepcopy(features).to("cuda"), sizes=PARITY_SIZES)
    assert report.provider == "CUDAExecutionProvider" and report.tolerance == 2e-2
    assert report.ok, report.message
