"""``style_loss="mixed"`` (Gram on the texture layers, W2 on relu4_1) and ``style_energy_floor``, on small images."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from styletx_core.balance import W2_TOLERANCE_RATIO, StyleBalance
from styletx_core.engine import StyleTransfer
from styletx_core.errors import OptionError
from styletx_core.imageio import pil_to_tensor
from styletx_core.layers import MIXED_W2_LAYERS, layer_loss_kind
from styletx_core.losses import GramStyleLoss, W2StyleLoss
from styletx_core.options import StylizeOptions
from styletx_core.targets import (
    ENERGY_RATIO_LIMIT,
    TargetCache,
    energy_factors,
    style_loss,
    style_statistics,
)

LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def test_mixed_matches_relu4_1_by_w2_and_every_other_layer_by_gram() -> None:
    assert [layer_loss_kind("mixed", layer) for layer in LAYERS] == ["gram", "gram", "gram", "w2", "gram"]
    assert {layer_loss_kind("gram", layer) for layer in LAYERS} == {"gram"}
    assert {layer_loss_kind("w2", layer) for layer in LAYERS} == {"w2"}


def test_mixed_statistics_are_a_mean_and_covariance_only_at_the_w2_layer(
    engine: StyleTransfer, style_image: Image.Image
) -> None:
    net = engine.network("vgg19", "max")
    cache = TargetCache()
    style = pil_to_tensor(style_image)
    gram = style_statistics(cache, net, style, StylizeOptions(style_loss="gram", deep_style_tiles=0), 64)
    mixed = style_statistics(cache, net, style, StylizeOptions(style_loss="mixed", deep_style_tiles=0), 64)
    for layer in LAYERS:
        if layer in MIXED_W2_LAYERS:
            mean, cov = mixed[layer]
            channels = gram[layer][0].shape[0]
            assert mean.shape == (channels,) and cov.shape == (channels, channels)
            # Gram = Σ + μμᵀ: the same second moments, split.
            assert torch.allclose(cov + torch.outer(mean, mean), gram[layer][0], rtol=1e-3, atol=1e-4)
            assert isinstance(style_loss(mixed[layer]), W2StyleLoss)
        else:
            assert torch.equal(mixed[layer][0], gram[layer][0])
            assert isinstance(style_loss(mixed[layer]), GramStyleLoss)
    assert cache.info()["size"] == 2  # the kind is part of the cache key


def test_a_w2_layer_is_driven_toward_a_proportionally_looser_tolerance() -> None:
    # The same measured error, 0.2: a Gram layer is 2× short of 0.1 and pulls harder; the W2 layer is within
    # W2_TOLERANCE_RATIO × 0.1 and stays at its floor; the deep layer keeps its own tolerance either way.
    balance = StyleBalance(LAYERS, tolerance=0.1, loss_kind="mixed")
    assert balance.target("relu4_1") == pytest.approx(0.1 * W2_TOLERANCE_RATIO)
    assert balance.target("relu3_1") == pytest.approx(0.1)
    assert balance.target("relu5_1") == StyleBalance(LAYERS).target("relu5_1")
    balance.update(dict.fromkeys(LAYERS, 0.2))
    assert balance.multipliers["relu3_1"] == pytest.approx(2.0)
    assert balance.multipliers["relu4_1"] == 1.0


def test_the_energy_floor_keeps_a_muted_style_at_its_base_weight_and_a_vivid_one_above() -> None:
    content = {name: torch.ones(1, 1, 1, 2) for name in ("muted", "vivid")}  # content Gram [[1]]
    targets = {"muted": GramStyleLoss(torch.tensor([[0.5]])), "vivid": GramStyleLoss(torch.tensor([[2.0]]))}
    third = energy_factors(targets, content, ["muted", "vivid"], 1.0, floor=1 / 3)
    floored = energy_factors(targets, content, ["muted", "vivid"], 1.0)  # the default floor, 1
    assert third == {"muted": pytest.approx(0.5), "vivid": pytest.approx(2.0)}
    assert floored == {"muted": pytest.approx(1.0), "vivid": pytest.approx(2.0)}
    blank = {"none": GramStyleLoss(torch.tensor([[1e-9]]))}
    assert energy_factors(blank, {"none": torch.ones(1, 1, 1, 2)}, ["none"], 1.0, floor=0.01) == {
        "none": pytest.approx(0.01)
    }
    assert ENERGY_RATIO_LIMIT > 1


@pytest.mark.parametrize(("name", "value"), [
    ("style_energy_floor", 0.0), ("style_energy_floor", 1.5), ("style_energy_floor", float("nan")),
    ("layout_weight", -0.1), ("layout_weight", float("nan")), ("layout_weight", math.inf),
])
def test_an_out_of_range_quality_option_names_the_option(name: str, value: float) -> None:
    with pytest.raises(OptionError, match=name):
        StylizeOptions(**{name: value})


def test_a_mixed_job_runs_and_its_w2_layer_relaxes_where_gram_would_pull(
    engine: StyleTransfer, content_image: Image.Image, style_image: Image.Image
) -> None:
    opts = StylizeOptions(size=96, min_size=48, iterations=6, coarse_iterations=6, seed=4, style_energy_floor=1.0)
    gram = engine.stylize(content_image, [style_image], opts.replace(style_loss="gram"))
    mixed = engine.stylize(content_image, [style_image], opts.replace(style_loss="mixed"))
    assert mixed.image.size == gram.image.size
    assert set(mixed.style_errors) == set(LAYERS)
    assert all(torch.isfinite(torch.tensor(list(mixed.style_errors.values()))))
    # relu4_1's error is now a W2 distance, read against a 3× looser tolerance.
    assert mixed.style_errors["relu4_1"] != gram.style_errors["relu4_1"]
    assert mixed.style_multipliers["relu4_1"] <= gram.style_multipliers["relu4_1"]


def test_the_request_fields_reach_the_engine_and_a_bad_floor_names_its_field() -> None:
    from styletx_proto.v1 import styletx_pb2 as pb
    from styletx_server.errors import ServiceError
    from styletx_server.validation import params_to_options

    opts = params_to_options(pb.StylizeParams(style_loss=pb.STYLE_LOSS_MIXED, style_energy_floor=1.0), None)
    assert (opts.style_loss, opts.style_energy_floor) == ("mixed", 1.0)
    assert params_to_options(pb.StylizeParams(), None).style_energy_floor == StylizeOptions().style_energy_floor
    with pytest.raises(ServiceError) as caught:
        params_to_options(pb.StylizeParams(style_energy_floor=2.0), None)
    assert caught.value.field == "params.style_energy_floor"
