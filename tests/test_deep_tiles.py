"""Typical-tile deep style statistics (``StylizeOptions.deep_style_tiles``): an object confined to a few tiles of the
painting drops out of the deep target, a texture across the whole painting stays, and the target is still a Gram
matrix some image has."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from styletx_core.engine import StyleTransfer
from styletx_core.errors import OptionError
from styletx_core.imageio import pil_to_tensor
from styletx_core.losses import gram_matrix
from styletx_core.options import StylizeOptions
from styletx_core.targets import TargetCache, style_statistics, typical_tile_statistics


def _painting_with_an_object() -> torch.Tensor:
    """Channel 0: a texture over the whole canvas. Channel 1: an 'eye' in one corner tile only."""
    gen = torch.Generator().manual_seed(0)
    features = torch.zeros(1, 3, 16, 16)
    features[0, 0] = 1.0 + 0.1 * torch.rand(16, 16, generator=gen)
    features[0, 1, 1:3, 1:3] = 8.0
    features[0, 2] = torch.rand(16, 16, generator=gen)
    return features


def test_an_object_in_one_tile_drops_out_and_the_texture_stays() -> None:
    features = _painting_with_an_object()
    whole = gram_matrix(features)[0]
    (typical,) = typical_tile_statistics(features, "gram", 4)
    assert whole[1, 1] > 0.5  # the whole painting's Gram holds the eye's energy
    assert typical[1, 1] == 0 and typical[0, 1] == 0  # the typical half of the 16 tiles does not
    assert typical[0, 0] == pytest.approx(float(whole[0, 0]), rel=0.1)  # the texture is kept
    assert typical[2, 2] == pytest.approx(float(whole[2, 2]), rel=0.35)


def test_the_target_is_a_gram_matrix_some_image_has() -> None:
    """Tiles where one channel is strong and the other weak: element by element, the median Gram has a small
    diagonal and a large off-diagonal, an indefinite matrix no image has; a mean of tiles' Grams is positive
    semidefinite."""
    pixels = [(10.0, 0.1)] * 4 + [(0.1, 10.0)] * 4 + [(0.0, 0.0)]
    features = torch.tensor(pixels).T.reshape(1, 2, 3, 3)
    per_tile = torch.stack([torch.outer(torch.tensor(p), torch.tensor(p)) for p in pixels])
    assert torch.linalg.eigvalsh(per_tile.median(0).values).min() < 0
    (typical,) = typical_tile_statistics(features, "gram", 3)
    assert torch.linalg.eigvalsh(typical.double()).min() > -1e-9


def test_the_share_sets_how_many_tiles_are_averaged() -> None:
    features = _painting_with_an_object()
    (everything,) = typical_tile_statistics(features, "gram", 4, share=1.0)
    torch.testing.assert_close(everything, gram_matrix(features)[0], rtol=1e-5, atol=1e-6)  # equal tiles: the mean
    (one,) = typical_tile_statistics(features, "gram", 4, share=0.01)
    assert one[1, 1] == 0


def test_one_tile_is_the_whole_painting_and_w2_gets_typical_tiles_too() -> None:
    features = _painting_with_an_object()
    (single,) = typical_tile_statistics(features, "gram", 1)
    torch.testing.assert_close(single, gram_matrix(features)[0])
    mean, covariance = typical_tile_statistics(features, "w2", 4)
    assert mean.shape == (3,) and covariance.shape == (3, 3)
    assert mean[1] == 0 and mean[0] > 0.9


def test_a_map_smaller_than_the_grid_uses_the_tiles_it_has() -> None:
    features = torch.rand(1, 4, 2, 3)
    (typical,) = typical_tile_statistics(features, "gram", 4)
    assert typical.shape == (4, 4) and torch.isfinite(typical).all()


def test_only_the_deep_layers_change_and_the_cache_keeps_both(engine: StyleTransfer, style_image: Image.Image) -> None:
    net = engine.network("vgg19", "max")
    cache = TargetCache()
    style = pil_to_tensor(style_image)
    plain = style_statistics(cache, net, style, StylizeOptions(), 96)
    tiled = style_statistics(cache, net, style, StylizeOptions(deep_style_tiles=4), 96)
    for layer in ("relu1_1", "relu2_1", "relu3_1", "relu4_1"):
        assert torch.equal(plain[layer][0], tiled[layer][0])
    assert not torch.equal(plain["relu5_1"][0], tiled["relu5_1"][0])
    assert cache.info()["size"] == 2


@pytest.mark.parametrize("value", [-1, 17, 2.5e9])
def test_out_of_range_tiles_name_the_option(value: float) -> None:
    with pytest.raises(OptionError, match="deep_style_tiles"):
        StylizeOptions(deep_style_tiles=value)  # type: ignore[arg-type]


def test_a_job_runs_with_deep_tiles(
    engine: StyleTransfer, content_image: Image.Image, style_image: Image.Image
) -> None:
    opts = StylizeOptions(size=64, min_size=64, iterations=4, seed=3)
    plain = engine.stylize(content_image, [style_image], opts)
    tiled = engine.stylize(content_image, [style_image], opts.replace(deep_style_tiles=4))
    assert tiled.image.size == plain.image.size
    assert tiled.style_errors["relu5_1"] != plain.style_errors["relu5_1"]


def test_the_request_field_reaches_the_engine_and_a_bad_value_names_it() -> None:
    from styletx_proto.v1 import styletx_pb2 as pb
    from styletx_server.errors import ServiceError
    from styletx_server.validation import params_to_options

    assert params_to_options(pb.StylizeParams(deep_style_tiles=4), None).deep_style_tiles == 4
    assert params_to_options(pb.StylizeParams(), None).deep_style_tiles == StylizeOptions().deep_style_tiles
    with pytest.raises(ServiceError) as caught:
        params_to_options(pb.StylizeParams(deep_style_tiles=99), None)
    assert caught.value.field == "params.deep_style_tiles"
