"""The optimisation loop on 64–96 px images with random VGG weights (offline, a few seconds each)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from support.faults import FaultLoss

from styletx_core import color
from styletx_core.engine import MAX_NETWORKS, StyleTransfer
from styletx_core.errors import Cancelled, EngineError, OptionError, ResourceLimitError
from styletx_core.imageio import pil_to_tensor, tensor_to_pil
from styletx_core.options import StylizeOptions
from styletx_core.progress import Iterate
from styletx_core.regions import RegionPlan

SMALL = {"size": 64, "min_size": 45, "iterations": 8, "coarse_iterations": 4, "seed": 3}


def _run(engine: StyleTransfer, content: Image.Image, styles: list[Image.Image], **changes: object):
    seen: list[Iterate] = []
    result = engine.stylize(content, styles, StylizeOptions(**{**SMALL, **changes}), seen.append)
    return result, seen


TERMS = {"content": "content_weight", "style": "style_weight", "tv": "tv_weight"}


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
@pytest.mark.parametrize("term", ["content", "style-gram", "style-w2", "tv"])
def test_each_loss_decreases(engine, content_image, style_image, optimizer: str, term: str) -> None:
    # Each term optimised alone (the others weighted 0) on one scale, from noise so that every term starts high.
    name, _, style_loss = term.partition("-")
    weights = {field: (1.0 if key == name else 0.0) for key, field in TERMS.items()}
    # W2 on the deepest layers of a 64 px image fits 512-d Gaussians to a dozen positions: degenerate, so the
    # W2 case uses the shallow layers, where the statistics are well defined.
    layers = {"style_layers": ("relu1_1", "relu2_1", "relu3_1")} if style_loss == "w2" else {}
    steps = 25 if style_loss == "w2" else 10
    result, seen = _run(engine, content_image, [style_image], optimizer=optimizer, style_loss=style_loss or "gram",
                        min_size=64, iterations=steps, init="noise", learning_rate=0.01, **weights, **layers)
    first, best = seen[0].losses[name], min(it.losses[name] for it in seen)
    assert best < (0.9 if style_loss == "w2" else 0.7) * first, f"{term} did not decrease: {first} → {best}"
    assert result.image.size == (64, 48)
    assert result.iterations == len(seen) == steps


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_total_loss_decreases(engine, content_image, style_image, optimizer: str) -> None:
    _, seen = _run(engine, content_image, [style_image], optimizer=optimizer, min_size=64, iterations=10,
                   learning_rate=0.05)
    assert seen[-1].loss < 0.8 * seen[0].loss


def test_progress_reports_scales_eta_and_previews(engine, content_image, style_image) -> None:
    result, seen = _run(engine, content_image, [style_image], preview_every=4)
    assert [it.iteration for it in seen] == list(range(1, len(seen) + 1))
    assert seen[0].scale_count == 2 and {it.scale_index for it in seen} == {0, 1}
    assert seen[0].total_iterations == 4 + 8 == len(seen)
    assert seen[-1].eta == pytest.approx(0.0, abs=1e-9) and seen[0].eta > 0
    assert all(it.elapsed > 0 and it.peak_memory_bytes > 0 for it in seen)
    previews = [it for it in seen if it.preview is not None]
    assert [it.iteration for it in previews] == [4, 8, 12]
    assert previews[-1].preview is not None and previews[-1].preview().size == (64, 48)
    # Σ iterations × scale area / final area: 4 at 45×34 + 8 at 64×48.
    assert (seen[0].width, seen[0].height) == (45, 34)
    assert result.equivalent_iterations == pytest.approx(8 + 4 * (45 * 34) / (64 * 48))


def test_seed_reproduces_pixels(engine, content_image, style_image) -> None:
    first, _ = _run(engine, content_image, [style_image], init="noise")
    second, _ = _run(engine, content_image, [style_image], init="noise")
    other, _ = _run(engine, content_image, [style_image], init="noise", seed=4)
    assert np.array_equal(np.asarray(first.image), np.asarray(second.image))
    assert not np.array_equal(np.asarray(first.image), np.asarray(other.image))
    assert first.seed == 3


def test_unseeded_run_reports_its_seed(engine, content_image, style_image) -> None:
    result, _ = _run(engine, content_image, [style_image], seed=None, iterations=1, coarse_iterations=1)
    again, _ = _run(engine, content_image, [style_image], seed=result.seed, iterations=1, coarse_iterations=1)
    assert np.array_equal(np.asarray(result.image), np.asarray(again.image))


def test_swapping_content_and_style_runs(engine, content_image, style_image) -> None:
    result, seen = _run(engine, style_image, [content_image])
    assert result.image.size[0] == 64 and seen[-1].loss < seen[0].loss * 10


@pytest.mark.parametrize("init", ["content", "noise", "style"])
def test_inits(engine, content_image, style_image, init: str) -> None:
    result, _ = _run(engine, content_image, [style_image], init=init, iterations=2, coarse_iterations=0)
    assert result.image.size == (64, 48)


def test_style_blend_weights_move_the_style_loss(engine, content_image, style_image, second_style_image) -> None:
    only_a = StylizeOptions(**{**SMALL, "style_blend_weights": (1.0, 0.0)})
    only_b = StylizeOptions(**{**SMALL, "style_blend_weights": (0.0, 1.0)})
    a = engine.stylize(content_image, [style_image, second_style_image], only_a)
    single = engine.stylize(content_image, [style_image], StylizeOptions(**SMALL))
    b = engine.stylize(content_image, [style_image, second_style_image], only_b)
    assert np.array_equal(np.asarray(a.image), np.asarray(single.image))  # weight 0 removes a style exactly
    assert not np.array_equal(np.asarray(a.image), np.asarray(b.image))


def _chroma(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    return color.chroma(pil_to_tensor(image.resize(size, Image.Resampling.LANCZOS)))


@pytest.mark.parametrize("mode", ["luminance", "histogram"])
def test_preserve_color_keeps_content_chroma(engine, content_image, style_image, mode: str) -> None:
    plain, _ = _run(engine, content_image, [style_image])
    kept, _ = _run(engine, content_image, [style_image], preserve_color=mode)
    reference = _chroma(content_image, plain.image.size)
    if mode == "luminance":
        # Luminance preservation puts the content's I and Q channels back: equal up to 8-bit rounding.
        plain_error = float((_chroma(plain.image, plain.image.size) - reference).abs().mean())
        kept_error = float((_chroma(kept.image, kept.image.size) - reference).abs().mean())
        assert kept_error < 0.01 < plain_error, (plain_error, kept_error)
    else:
        # Histogram matching recolours the style to the content's colour distribution: compare chroma statistics.
        def stats_error(image: Image.Image) -> float:
            chroma = _chroma(image, image.size).flatten(2)
            target = reference.flatten(2)
            return float((chroma.mean(2) - target.mean(2)).abs().sum() + (chroma.std(2) - target.std(2)).abs().sum())
        assert stats_error(kept.image) < 0.6 * stats_error(plain.image)


def test_cancel_stops_between_iterations(engine, content_image, style_image) -> None:
    seen: list[int] = []

    def cancel_at_three(it: Iterate) -> None:
        seen.append(it.iteration)
        if it.iteration == 3:
            raise Cancelled("client went away")

    with pytest.raises(Cancelled):
        engine.stylize(content_image, [style_image], StylizeOptions(**SMALL), cancel_at_three)
    assert seen == [1, 2, 3]


@pytest.mark.slow
def test_variations_differ_and_are_reproducible(engine, content_image, style_image) -> None:
    opts = StylizeOptions(**{**SMALL, "iterations": 3, "coarse_iterations": 0})
    first = engine.variations(content_image, [style_image], 2, opts)
    again = engine.variations(content_image, [style_image], 2, opts)
    assert [r.seed for r in first] == [3, 4]
    assert np.array_equal(np.asarray(first[0].image), np.asarray(again[0].image))
    assert not np.array_equal(np.asarray(first[0].image), np.asarray(first[1].image))


@pytest.mark.slow
def test_target_cache_hits_on_repeat(engine, content_image, style_image) -> None:
    before = engine.target_cache_info()["hits"]
    _run(engine, content_image, [style_image], iterations=1, coarse_iterations=1)
    _run(engine, content_image, [style_image], iterations=1, coarse_iterations=1)
    assert engine.target_cache_info()["hits"] >= before + 2


def test_errors_are_clear(engine, content_image, style_image) -> None:
    with pytest.raises(EngineError, match="style image"):
        engine.stylize(content_image, [], StylizeOptions(**SMALL))
    with pytest.raises(OptionError, match="style_blend_weights"):
        engine.stylize(content_image, [style_image], StylizeOptions(**{**SMALL, "style_blend_weights": (1, 1)}))
    small = StyleTransfer(device="cpu", weights="file", weights_path=engine.weights_path, max_pixels=1000)
    with pytest.raises(ResourceLimitError, match="pixels"):
        small.stylize(content_image, [style_image], StylizeOptions(**SMALL))


@pytest.mark.parametrize(("fault", "error"), [("nan", EngineError), ("oom", torch.OutOfMemoryError),
                                              ("boom", RuntimeError)])
def test_injected_faults_surface(engine, content_image, style_image, fault: str, error: type) -> None:
    """A failure inside the optimiser's step (out of memory, a NaN loss, anything) leaves stylize as itself."""
    with pytest.raises(error):
        engine.stylize(content_image, [style_image], StylizeOptions(**SMALL),
                       extra_losses={"fault": FaultLoss(fault, at=2)})


@pytest.mark.slow
def test_stylize_leaves_the_global_rng_alone(engine, content_image, style_image) -> None:
    """Seeding is per job (a torch.Generator): workers side by side must not reseed each other's RNG."""
    state = torch.get_rng_state()
    engine.stylize(content_image, [style_image], StylizeOptions(**{**SMALL, "init": "noise", "seed": 3}))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"size": 0}, "size"), ({"iterations": -1}, "iterations"), ({"optimizer": "sgd"}, "optimizer"),
     ({"style_weight": float("nan")}, "style_weight"), ({"content_layers": ("relu9_9",)}, "content_layers"),
     ({"style_layer_weights": (1.0,)}, "style_layer_weights"), ({"tv_weight": float("inf")}, "tv_weight"),
     ({"learning_rate": "fast"}, "learning_rate"), ({"style_layer_weights": (0, 0, 0, 0, 0)}, "style_layer_weights"),
     ({"model": "vgg16", "style_layers": ("relu1_1", "relu3_4")}, "style_layers")],  # relu3_4 is VGG19's only
)
def test_out_of_range_options_name_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(OptionError) as caught:
        StylizeOptions(**changes)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_scales_grow_by_sqrt2_to_the_target() -> None:
    assert StylizeOptions(size=512, min_size=128).scales() == [128, 181, 256, 362, 512]
    assert StylizeOptions(size=100, min_size=128).scales() == [100]


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_native_size_input_runs(engine, optimizer: str) -> None:
    # An input already at the output size skips resizing, so the optimised tensor comes straight from Pillow's
    # HWC layout: L-BFGS flattens gradients with .view() and needs a contiguous image.
    content = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8), "RGB")
    result, _ = _run(engine, content, [content], size=48, min_size=48, iterations=2, optimizer=optimizer)
    assert result.image.size == (48, 32)


def _contrast(image: Image.Image, factor: float) -> Image.Image:
    tensor = pil_to_tensor(image)
    mean = tensor.mean(dim=(2, 3), keepdim=True)
    return tensor_to_pil(((tensor - mean) * factor + mean).clamp(0, 1))


def _style_weights(engine: StyleTransfer, content: Image.Image, style: Image.Image, power: float) -> list[float]:
    opts = StylizeOptions(**{**SMALL, "style_energy_power": power})
    net = engine.network(opts.model, opts.pooling)
    plan = RegionPlan.build(None, 1, (64, 48), opts)
    losses = engine._build_losses(net, pil_to_tensor(content), [pil_to_tensor(style)], (64, 48), opts, {},
                                  plan.balance(opts.style_tolerance), plan)
    return [term.weight for term in losses["style"]]


def test_style_energy_weighting_favours_vivid_styles(engine, content_image, style_image) -> None:
    vivid, muted = _contrast(style_image, 1.5), _contrast(style_image, 0.4)
    flat = _style_weights(engine, content_image, vivid, 0.0)
    assert flat == _style_weights(engine, content_image, muted, 0.0) == pytest.approx([StylizeOptions().style_weight / 5] * 5)
    vivid_weights = _style_weights(engine, content_image, vivid, 1.5)
    muted_weights = _style_weights(engine, content_image, muted, 1.5)
    assert all(v > m for v, m in zip(vivid_weights, muted_weights, strict=True)), (vivid_weights, muted_weights)


@pytest.mark.slow
def test_style_energy_weighting_moves_the_balance(engine, content_image, style_image) -> None:
    # A low-contrast style has less texture energy than the content: weighing by energy pulls less, so the result
    # keeps more content and matches the style less than with every style weighed alike — and the reverse for a
    # vivid style. Both errors are measured with the unweighted losses; the adaptive balance is off so that only
    # the energy weighting differs, and the energy floor is ⅓ so that a muted style's weight may fall below the base
    # (the default floor 1 keeps it there: test_mixed_loss.py).
    opts = StylizeOptions(**{**SMALL, "style_energy_power": 0.0, "style_tolerance": 0.0, "style_energy_floor": 1 / 3})
    net = engine.network(opts.model, opts.pooling)

    def errors(style: Image.Image, power: float) -> tuple[float, float]:
        result, _ = _run(engine, content_image, [style], style_energy_power=power, style_tolerance=0.0, min_size=64,
                         iterations=30, style_energy_floor=1 / 3)
        plan = RegionPlan.build(None, 1, result.image.size, opts)
        losses = engine._build_losses(net, pil_to_tensor(content_image), [pil_to_tensor(style)], result.image.size,
                                      opts, {}, plan.balance(0.0), plan)
        image = pil_to_tensor(result.image)
        with torch.no_grad():
            _, parts = losses(net(image), image)
        return float(parts["content"]), float(parts["style"])

    for style, less_style in ((_contrast(style_image, 0.3), True), (_contrast(style_image, 2.0), False)):
        (content_flat, style_flat), (content_energy, style_energy) = errors(style, 0.0), errors(style, 1.5)
        assert (content_energy < content_flat) == less_style, (content_flat, content_energy)
        assert (style_energy > style_flat) == less_style, (style_flat, style_energy)


def test_any_known_layer_can_be_used(engine, content_image, style_image) -> None:
    # Layers outside the default set (and deeper than relu5_1) get a network that returns them.
    result, seen = _run(engine, content_image, [style_image], style_layers=("relu2_2", "relu3_2", "relu5_4"),
                        content_layers=("relu3_3",), iterations=2, coarse_iterations=1)
    assert result.image.size == (64, 48) and seen[-1].losses["style"] > 0
    net = engine.network("vgg19", "max", ("relu5_4",))
    assert "relu5_4" in net.layers and "relu5_4" in net(pil_to_tensor(content_image))


@pytest.mark.slow
def test_networks_for_other_layer_sets_are_bounded(engine) -> None:
    for layer in ("relu1_2", "relu2_2", "relu3_2", "relu3_3", "relu3_4", "relu4_3", "relu4_4", "relu5_2"):
        engine.network("vgg19", "max", (layer,))
    assert len(engine._networks) == MAX_NETWORKS
    assert engine.network("vgg19", "max") is engine.network("vgg19", "max", ("relu4_2",))  # the default set


@pytest.mark.slow
def test_each_job_has_its_own_checkpoint_switch(engine, content_image, style_image, monkeypatch) -> None:
    # A job whose plan checkpoints must not switch checkpointing on for the shared network other jobs use.
    plan = engine.memory_plan
    monkeypatch.setattr(engine, "memory_plan", lambda sizes, opts: [
        dataclasses.replace(p, checkpoint=True) for p in plan(sizes, opts)])
    shared = engine.network("vgg19", "max")
    seen: list[bool] = []
    result = engine.stylize(content_image, [style_image], StylizeOptions(**SMALL),
                            lambda it: seen.append(shared.checkpoint))
    assert all(p["checkpoint"] for p in result.memory_plan)
    assert seen and not any(seen)
