"""Spatial and scale control (issue 21): regional styles, content strength, per-style layers (64 px, random VGG)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from styletx_core.engine import StyleTransfer
from styletx_core.errors import OptionError
from styletx_core.imageio import pil_to_tensor
from styletx_core.losses import GramStyleLoss, W2StyleLoss, gram_matrix, guided_gram_matrix, mean_and_covariance
from styletx_core.options import StylizeOptions
from styletx_core.regions import RegionPlan, StyleControl, composite

SMALL = {"size": 64, "min_size": 45, "iterations": 10, "coarse_iterations": 5, "seed": 3}
#: Texture layers: the random network's deep layers see a 64 px image as a handful of positions.
MEASURED = ("relu1_1", "relu2_1", "relu3_1")


def _halves(size: tuple[int, int], top: bool) -> Image.Image:
    """A mask of the top (or bottom) half of an image of ``size``, drawn at another size (masks are resized)."""
    width, height = size[0] * 2, size[1] * 2
    array = np.zeros((height, width), np.uint8)
    array[: height // 2] = 255
    return Image.fromarray(array if top else 255 - array, "L")


def _region_distance(engine: StyleTransfer, image: Image.Image, style: Image.Image, top: bool) -> float:
    """Mean relative Gram distance, over :data:`MEASURED`, of ``image``'s top/bottom half to ``style``."""
    net = engine.network("vgg19", "max")
    with torch.no_grad():
        features = net(pil_to_tensor(image))
        style_features = net(pil_to_tensor(style.resize(image.size)))
    distances = []
    for layer in MEASURED:
        height = features[layer].shape[-2]
        guide = torch.zeros(1, 1, height, features[layer].shape[-1])
        guide[..., : height // 2, :] = 1.0
        region = guided_gram_matrix(features[layer], guide if top else 1 - guide)
        target = gram_matrix(style_features[layer])
        distances.append(float((region - target).norm() / target.norm()))
    return float(np.mean(distances))


def _stylize(engine, content, styles, controls=None, **changes):  # type: ignore[no-untyped-def]
    opts = StylizeOptions(**{**SMALL, "style_layers": MEASURED, **changes})
    return engine.stylize(content, styles, opts, controls=controls)


def test_guided_statistics_by_hand() -> None:
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # 1 channel, 2×2
    guide = torch.tensor([[[[1.0, 0.5], [0.0, 0.0]]]])
    expected = (1.0 * 1 + 0.5 * 4) / 1.5
    assert float(guided_gram_matrix(features, guide)) == pytest.approx(expected)
    mean, cov = mean_and_covariance(features, guide)
    by_hand_mean = (1.0 * 1 + 0.5 * 2) / 1.5
    assert float(mean) == pytest.approx(by_hand_mean)
    assert float(cov) == pytest.approx((1.0 * (1 - by_hand_mean) ** 2 + 0.5 * (2 - by_hand_mean) ** 2) / 1.5)
    ones = torch.ones(1, 1, 2, 2)
    assert torch.equal(guided_gram_matrix(features, ones), gram_matrix(features))


def test_guided_losses_see_only_their_region() -> None:
    torch.manual_seed(0)
    features = torch.rand(1, 4, 6, 6, requires_grad=True)
    guide = torch.zeros(1, 1, 6, 6)
    guide[..., :3, :] = 1.0
    for loss in (GramStyleLoss(torch.eye(4), guide=guide), W2StyleLoss(torch.zeros(4), torch.eye(4), guide=guide)):
        features.grad = None
        loss(features).backward()
        assert features.grad is not None
        assert float(features.grad[..., 3:, :].abs().max()) == 0.0 and float(features.grad[..., :3, :].abs().max()) > 0


def test_complementary_masks_give_each_region_its_style(engine, content_image, style_image, second_style_image):
    sky, ground = _halves(content_image.size, True), _halves(content_image.size, False)
    styles = [style_image, second_style_image]
    result = _stylize(engine, content_image, styles, [StyleControl(mask=sky), StyleControl(mask=ground)]).image
    swapped = _stylize(engine, content_image, styles, [StyleControl(mask=ground), StyleControl(mask=sky)]).image
    for image, top_style, bottom_style in ((result, 0, 1), (swapped, 1, 0)):
        top = [_region_distance(engine, image, style, True) for style in styles]
        bottom = [_region_distance(engine, image, style, False) for style in styles]
        assert top[top_style] < 0.8 * top[1 - top_style], top
        assert bottom[bottom_style] < 0.8 * bottom[1 - bottom_style], bottom
    assert not np.array_equal(np.asarray(result), np.asarray(swapped))


def test_all_ones_mask_is_no_mask(engine, content_image, style_image) -> None:
    ones = Image.new("L", (17, 11), 255)
    plain = _stylize(engine, content_image, [style_image]).image
    masked = _stylize(engine, content_image, [style_image], [StyleControl(mask=ones)]).image
    difference = np.abs(np.asarray(plain, np.int16) - np.asarray(masked, np.int16))
    assert difference.max() <= 2 and difference.mean() < 0.05, (difference.max(), difference.mean())


def test_uncovered_pixels_keep_the_content(engine, content_image, style_image) -> None:
    sky = _halves(content_image.size, True)
    image = _stylize(engine, content_image, [style_image], [StyleControl(mask=sky)], init="content").image
    changed = np.abs(np.asarray(image, np.float32) - np.asarray(content_image.resize(image.size), np.float32))
    half = changed.shape[0] // 2
    assert changed[half + 4 :].mean() < 0.5 * changed[: half - 4].mean()


def test_content_strength_zero_lets_a_region_move(engine, content_image, style_image) -> None:
    strength = _halves(content_image.size, False)  # content kept below, free above
    opts = StylizeOptions(**{**SMALL, "style_layers": MEASURED, "content_weight": 20.0})
    image = engine.stylize(content_image, [style_image], opts, content_strength=strength).image
    net = engine.network("vgg19", "max")
    with torch.no_grad():
        moved = net(pil_to_tensor(image))["relu4_2"] - net(pil_to_tensor(content_image.resize(image.size)))["relu4_2"]
    energy = moved.pow(2).sum(1)[0]
    half = energy.shape[0] // 2
    assert float(energy[:half].mean()) > 1.5 * float(energy[half:].mean())


def test_per_style_layers_change_only_the_named_layers(engine, content_image, style_image, second_style_image):
    opts = StylizeOptions(**SMALL)
    size = (64, 48)
    plan = RegionPlan.build([None, StyleControl(layers=("relu1_1", "relu2_1"))], 2, size, opts)
    weights = plan.group_layers(plan.groups[0])
    # Each style brings half the style weight: the first spread over its five layers, the second over its two.
    expected = {layer: 0.5 / 5 + (0.5 / 2 if layer in ("relu1_1", "relu2_1") else 0.0) for layer in opts.style_layers}
    assert weights == pytest.approx(expected)
    alone = RegionPlan.build([StyleControl(layers=("relu2_1",))], 1, size, opts)
    assert alone.group_layers(alone.groups[0]) == {"relu2_1": 1.0}
    # Targets: the layers the second style does not name are the first style's alone, the named ones the blend.
    net = engine.network("vgg19", "max")
    from styletx_core.targets import TargetCache, blend_statistics, style_statistics

    cache = TargetCache()
    first, second = (pil_to_tensor(s) for s in (style_image, second_style_image))
    stats = [style_statistics(cache, net, first, opts, 64), style_statistics(cache, net, second, opts, 64, ("relu1_1",))]
    blended = blend_statistics(stats, [1.0, 1.0])
    assert torch.equal(blended["relu3_1"][0], stats[0]["relu3_1"][0])
    torch.testing.assert_close(blended["relu1_1"][0], (stats[0]["relu1_1"][0] + stats[1]["relu1_1"][0]) / 2)


def test_scale_control_runs_two_styles_at_two_scales(engine, content_image, style_image, second_style_image):
    controls = [StyleControl(layers=("relu4_1", "relu5_1")), StyleControl(layers=("relu1_1", "relu2_1"))]
    result = engine.stylize(content_image, [style_image, second_style_image], StylizeOptions(**SMALL), controls=controls)
    assert set(result.style_errors) == {"relu1_1", "relu2_1", "relu4_1", "relu5_1"}
    only_first = engine.stylize(content_image, [style_image, second_style_image], StylizeOptions(**SMALL),
                                controls=controls[:1])
    assert not np.array_equal(np.asarray(result.image), np.asarray(only_first.image))


@pytest.mark.parametrize(
    ("controls", "field"),
    [
        ([StyleControl(mask=Image.new("L", (8, 8), 0))], "styles[0].mask"),
        ([None, StyleControl(mask=Image.new("L", (300, 200), 0))], "styles[1].mask"),
        ([None, StyleControl(layers=("relu9_9",))], "styles[1].layers"),
        ([StyleControl(layers=())], "styles[0].layers"),
        ([StyleControl(layer_weights=(1.0, 2.0))], "styles[0].layer_weights"),
    ],
)
def test_bad_controls_name_the_field(controls, field: str) -> None:
    with pytest.raises(OptionError) as caught:
        RegionPlan.build(controls, 2, (64, 48), StylizeOptions(**SMALL))
    assert caught.value.field == field


def test_speck_mask_covers_nothing_at_the_working_size() -> None:
    speck = Image.new("L", (2000, 2000), 0)
    speck.putpixel((5, 5), 255)
    with pytest.raises(OptionError, match="covers nothing") as caught:
        RegionPlan.build([StyleControl(mask=speck)], 1, (64, 48), StylizeOptions(**SMALL))
    assert caught.value.field == "styles[0].mask"


def test_composite_feathers_and_blends_overlaps() -> None:
    base, red, blue = torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8), torch.full((1, 3, 8, 8), 0.5)
    left = torch.zeros(1, 1, 8, 8)
    left[..., :4] = 1.0
    hard = composite(base, [red], [left])
    assert torch.equal(hard[..., :4], red[..., :4]) and torch.equal(hard[..., 4:], base[..., 4:])
    soft = composite(base, [red], [left], feather=2.0)
    assert 0.0 < float(soft[0, 0, 4, 4]) < 1.0  # the edge is blended
    both = composite(base, [red, blue], [torch.ones(1, 1, 8, 8), torch.ones(1, 1, 8, 8)])
    torch.testing.assert_close(both, torch.full((1, 3, 8, 8), 0.75))


def test_masks_combine_with_colour_blends_w2_and_variations(engine, content_image, style_image, second_style_image):
    sky = _halves(content_image.size, True)
    styles = [style_image, second_style_image, style_image.rotate(180)]
    controls = [StyleControl(mask=sky)]  # the other two are blended below the sky
    opts = StylizeOptions(**{**SMALL, "iterations": 3, "coarse_iterations": 2, "preserve_color": "luminance",
                             "style_blend_weights": (1.0, 2.0, 1.0), "style_loss": "w2", "style_layers": MEASURED})
    result = engine.stylize(content_image, styles, opts, controls=controls)
    assert result.image.size == (64, 48)
    assert set(result.style_errors) == {*MEASURED, *(f"styles[0]/{layer}" for layer in MEASURED)}
    varied = engine.variations(content_image, styles, 2, opts, controls=controls)
    assert len(varied) == 2 and not np.array_equal(np.asarray(varied[0].image), np.asarray(varied[1].image))
