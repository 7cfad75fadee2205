"""Jobs optimised together in one batch (styletx_core.batch): each behaves as if it ran alone (64 px, CPU)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from PIL import Image
from support.faults import FaultLoss
from support.rounding import FLOOR_FACTOR, TOLERANCE, flip_lowest_bit, pixel_bound

from styletx_core.batch import BatchJob, batch_key, stylize_batch
from styletx_core.engine import NumericalError, StyleTransfer
from styletx_core.errors import Cancelled, EngineError, ResourceLimitError
from styletx_core.options import StylizeOptions
from styletx_core.progress import Iterate, StylizeResult

SMALL = {"size": 64, "min_size": 45, "iterations": 8, "coarse_iterations": 4}
# Batched and solo runs may differ by TOLERANCE or FLOOR_FACTOR × the solo run's rounding floor (support/rounding.py):
# the batched optimisers sum in another order than torch.optim.LBFGS / Adam (they agree to 1e-9 in float64,
# tests/test_optim.py). Against the same job run as a batch of one, the difference is 0 where the network's kernels
# are batch-invariant (_assert_companions_change_nothing): companions change nothing.
#: Relative difference allowed between a batched job's style multipliers and its solo run's.
MULTIPLIER_REL = 0.2


def _jobs(content: Image.Image, styles: list[Image.Image], optimizer: str = "lbfgs") -> list[StylizeOptions]:
    # Different seeds, inits, weights and styles: only what batch_key compares is shared.
    return [
        StylizeOptions(**SMALL, seed=1, optimizer=optimizer),
        StylizeOptions(**SMALL, seed=2, optimizer=optimizer, init="noise", style_weight=3.0),
        StylizeOptions(**SMALL, seed=3, optimizer=optimizer, content_weight=0.5, tv_weight=0.01),
    ]


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def _solo(engine: StyleTransfer, content, styles, opts: StylizeOptions):
    seen: list[Iterate] = []
    return engine.stylize(content, styles, opts, seen.append), seen


def _difference(a: StylizeResult, b: StylizeResult) -> float:
    return float(np.abs(_pixels(a.image) - _pixels(b.image)).mean())


@functools.cache
def _batch_invariant(engine: StyleTransfer, precision: str) -> bool:
    """Does ``engine``'s network give an image the same features in a batch of three as alone, at ``precision``
    and the 64 px final scale of ``SMALL``? Measured once per engine and precision. bf16 on the CPU does; on an
    Intel Xeon oneDNN's fp32 convolutions are chosen per batch size and round relu4_1 on differently (other CPUs'
    fp32 not measured), so there a batch is only the same within rounding."""
    net = engine.network("vgg19", "max").net
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 48, SMALL["size"], generator=generator)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        return torch.equal(net(images)[:1], net(images[:1]))


def _assert_companions_change_nothing(engine: StyleTransfer, result: StylizeResult, own: StylizeResult) -> None:
    """``result`` (a job in a batch) is bit for bit ``own`` (the job as a batch of one) where the network is
    batch-invariant, else within the always-allowed ``TOLERANCE``."""
    if _batch_invariant(engine, engine.precision(StylizeOptions(**SMALL))):
        assert _pixels(result.image).tolist() == _pixels(own.image).tolist()
    else:
        assert _difference(result, own) <= TOLERANCE


def _solo_nudged(engine: StyleTransfer, content, styles, opts: StylizeOptions, **kwargs) -> StylizeResult:
    """The solo run on the content with one bit flipped: how far it moves by itself shows how much rounding the
    optimisation amplifies; differences of that size between two implementations are not a bug."""
    return engine.stylize(flip_lowest_bit(content), styles, opts, **kwargs)


def _within_floor(batched: float, alone: float, nudged: float) -> bool:
    return abs(batched - alone) <= max(0.02 * abs(alone), FLOOR_FACTOR * abs(alone - nudged))


def _pixel_bound(alone: StylizeResult, nudged: StylizeResult) -> float:
    """The mean pixel difference a batched job may have from its solo run: ``TOLERANCE`` or the rounding floor."""
    return pixel_bound(_difference(alone, nudged))


def _assert_same_job(result: StylizeResult, alone: StylizeResult, nudged: StylizeResult) -> None:
    """``result`` (batched) is ``alone``'s job: within the always-allowed difference or the rounding floor
    ``nudged`` shows, in pixels and loss. The style multipliers are products of per-scale steps, each read on an
    intermediate image, so they scatter more than one nudge shows: within ``MULTIPLIER_REL`` (12 % measured on
    Zen 5's noise start)."""
    assert _difference(result, alone) <= _pixel_bound(alone, nudged)
    assert _within_floor(result.losses["loss"], alone.losses["loss"], nudged.losses["loss"])
    assert result.style_multipliers == pytest.approx(alone.style_multipliers, rel=MULTIPLIER_REL)


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_each_job_gets_its_solo_image(engine, content_image, style_image, second_style_image,
                                      optimizer: str) -> None:
    style_sets = [[style_image], [second_style_image], [style_image, second_style_image]]
    options = _jobs(content_image, [style_image], optimizer)
    seen: list[list[Iterate]] = [[], [], []]
    jobs = [BatchJob(content_image, s, o, seen[i].append) for i, (s, o) in enumerate(zip(style_sets, options, strict=True))]
    batched = stylize_batch(engine, jobs)
    for job, result, events in zip(jobs, batched, seen, strict=True):
        assert not isinstance(result, BaseException), result
        alone, alone_events = _solo(engine, content_image, job.styles, job.opts)
        (own_batch,) = stylize_batch(engine, [BatchJob(job.content, job.styles, job.opts)])
        _assert_companions_change_nothing(engine, result, own_batch)
        _assert_same_job(result, alone, _solo_nudged(engine, content_image, job.styles, job.opts))
        assert result.seed == alone.seed and result.iterations == alone.iterations == 12
        assert [e.iteration for e in events] == [e.iteration for e in alone_events]
    assert _pixels(batched[0].image).tolist() != _pixels(batched[1].image).tolist()


def test_cancelling_one_job_leaves_the_others_unchanged(engine, content_image, style_image) -> None:
    options = _jobs(content_image, [style_image])
    together = stylize_batch(engine, [BatchJob(content_image, [style_image], o) for o in options])

    def cancel_at_6(step: Iterate) -> None:
        if step.iteration == 6:
            raise Cancelled()

    callbacks = [None, cancel_at_6, None]
    partial = stylize_batch(engine, [BatchJob(content_image, [style_image], o, c)
                                    for o, c in zip(options, callbacks, strict=True)])
    assert isinstance(partial[1], Cancelled)
    for row in (0, 2):  # the batch shrinks to two at iteration 6
        _assert_companions_change_nothing(engine, partial[row], together[row])


def test_a_nan_fails_only_its_job(engine, content_image, style_image) -> None:
    options = _jobs(content_image, [style_image])
    extras = [None, {"fault": FaultLoss("nan", 5)}, {"fault": FaultLoss("boom", 3)}]
    outcomes = stylize_batch(engine, [BatchJob(content_image, [style_image], o, extra_losses=e)
                                     for o, e in zip(options, extras, strict=True)])
    assert isinstance(outcomes[1], NumericalError)
    assert isinstance(outcomes[2], RuntimeError) and "boom" in str(outcomes[2])
    (alone,) = stylize_batch(engine, [BatchJob(content_image, [style_image], options[0])])
    _assert_companions_change_nothing(engine, outcomes[0], alone)


def test_invalid_job_fails_alone_and_keys_must_match(engine, content_image, style_image) -> None:
    good = StylizeOptions(**SMALL, seed=1)
    outcomes = stylize_batch(engine, [BatchJob(content_image, [], good), BatchJob(content_image, [style_image], good)])
    assert isinstance(outcomes[0], EngineError) and not isinstance(outcomes[1], BaseException)
    with pytest.raises(EngineError, match="batch keys"):
        stylize_batch(engine, [BatchJob(content_image, [style_image], good),
                              BatchJob(content_image, [style_image], good.replace(iterations=9))])
    assert batch_key(good, (128, 96)) == batch_key(good.replace(seed=5, style_weight=9.0), (256, 192))
    assert batch_key(good, (128, 96)) != batch_key(good, (96, 128))


def test_a_batch_over_the_memory_plan_is_refused_before_any_work(random_vgg_weights, content_image,
                                                                 style_image) -> None:
    opts = StylizeOptions(**SMALL, seed=1)
    sizes = [(64, 48)]
    budget = StyleTransfer(device="cpu").memory_plan(sizes, opts)[0].estimate_bytes
    small = StyleTransfer(device="cpu", weights="file", weights_path=random_vgg_weights, memory_budget=budget)
    seen: list[Iterate] = []
    with pytest.raises(ResourceLimitError, match="8 jobs"):
        stylize_batch(small, [BatchJob(content_image, [style_image], opts, seen.append)] * 8)
    assert not seen


def test_regional_jobs_batch_like_any_other(engine, content_image, style_image, second_style_image) -> None:
    """Masks, own layers and a content-strength map travel with their job into a batch (issue 21 × 20): the
    masked job gets its solo image, and its plain companion is the same as in a batch of its own."""
    from styletx_core.regions import StyleControl

    sky = Image.new("L", (8, 8), 0)
    sky.paste(255, (0, 0, 8, 4))
    controls = [StyleControl(mask=sky), StyleControl(layers=("relu1_1", "relu2_1"))]
    strength = Image.new("L", (8, 8), 128)
    opts = StylizeOptions(**SMALL, seed=5)
    styles = [style_image, second_style_image]
    masked = BatchJob(content_image, styles, opts, controls=controls, content_strength=strength)
    plain = BatchJob(content_image, [style_image], StylizeOptions(**SMALL, seed=6))
    regional, companion = stylize_batch(engine, [masked, plain])
    assert not isinstance(regional, BaseException) and not isinstance(companion, BaseException)
    alone = engine.stylize(content_image, styles, opts, controls=controls, content_strength=strength)
    nudged = _solo_nudged(engine, content_image, styles, opts, controls=controls, content_strength=strength)
    _assert_same_job(regional, alone, nudged)
    (own,) = stylize_batch(engine, [plain])
    _assert_companions_change_nothing(engine, companion, own)
    unmasked = engine.stylize(content_image, styles, opts)
    # The mask mattered: a batch that dropped it would land near ``unmasked``, beyond the difference the same-job
    # check allows (so that check could see it), and the batched job is at least twice as close to its own solo run.
    assert _difference(regional, unmasked) > _pixel_bound(alone, nudged)
    assert _difference(regional, unmasked) > 2 * _difference(regional, alone)


def test_reading_losses_every_few_iterations_changes_no_image(random_vgg_weights, content_image,
                                                              style_image) -> None:
    """What a GPU does (``sync_every``): the images, the best iterate chosen and the fresh losses are those of
    reading every iteration; in between, the callback still runs each iteration with the last values read."""
    options = _jobs(content_image, [style_image])
    every: list[StylizeResult | BaseException] = []
    sparse_events: list[list[Iterate]] = [[], [], []]
    for sync_every, events in ((1, None), (5, sparse_events)):
        engine = StyleTransfer(device="cpu", weights="file", weights_path=random_vgg_weights, sync_every=sync_every)
        jobs = [BatchJob(content_image, [style_image], o, events[i].append if events else None)
                for i, o in enumerate(options)]
        outcomes = stylize_batch(engine, jobs)
        if sync_every == 1:
            every = outcomes
            continue
        for dense, sparse, seen in zip(every, outcomes, sparse_events, strict=True):
            assert _pixels(sparse.image).tolist() == _pixels(dense.image).tolist()
            assert [e.iteration for e in seen] == list(range(1, 13))  # cancellation is checked every iteration
            # 4 iterations at the coarse scale, then 8 at 64 px: read at each scale's first and last iteration
            # and at every 5th of a scale.
            fresh = [e.iteration for e in seen if e.loss_fresh]
            assert fresh == [1, 4, 5, 9, 12]
            assert [h["iteration"] for h in sparse.history] == fresh
            dense_losses = {h["iteration"]: h["loss"] for h in dense.history}
            assert all(h["loss"] == pytest.approx(dense_losses[h["iteration"]]) for h in sparse.history)
            stale = [e for e in seen if not e.loss_fresh]
            assert stale and all(e.loss == next(f.loss for f in reversed(seen[: e.iteration - 1]) if f.loss_fresh)
                                 for e in stale)


def test_a_nan_between_reads_fails_its_job_at_the_next_read(random_vgg_weights, content_image,
                                                            style_image) -> None:
    engine = StyleTransfer(device="cpu", weights="file", weights_path=random_vgg_weights, sync_every=5)
    options = _jobs(content_image, [style_image])
    extras = [None, {"fault": FaultLoss("nan", 6)}, None]
    outcomes = stylize_batch(engine, [BatchJob(content_image, [style_image], o, extra_losses=e)
                                     for o, e in zip(options, extras, strict=True)])
    assert isinstance(outcomes[1], NumericalError) and "iteration 9" in str(outcomes[1])
    (alone,) = stylize_batch(engine, [BatchJob(content_image, [style_image], options[0])])
    _assert_companions_change_nothing(engine, outcomes[0], alone)
