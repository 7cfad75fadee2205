"""Several jobs optimised together: one forward/backward of the network per iteration for the whole batch.

At batch 1 a GPU spends an iteration launching small kernels; stacking jobs along the batch dimension does the
same launches for all of them. Each job keeps everything of its own — content, styles, weights, seed, loss
modules (built by the same :meth:`StyleTransfer._build_losses` as a job alone), adaptive balance, optimiser
state (:mod:`styletx_core.optim`), progress, ETA and previews through its own callback — and the loss is the
sum of the jobs' losses, so each image receives exactly its own gradient (VGG has no batch statistics).

A job that is cancelled (its callback raises), whose loss stops being finite, or whose loss or callback
fails, leaves the batch at that iteration: its rows are dropped from the image and the optimiser state and
the others carry on unchanged; its outcome is the exception. Jobs batch only when :func:`batch_key` is equal:
same network and layers, precision, optimiser, scale sizes and iterations. Mixed sizes are not padded into a
bucket: zero padding changes every Gram matrix and the TV term unless each loss is masked, and masking is
per-style work of its own (see ``docs/batching.md``); the server waits for jobs with equal keys instead.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

from .engine import StyleTransfer, _Job, style_errors_of
from .errors import EngineError, ResourceLimitError
from .geometry import fit_long_side
from .losses import SumLoss
from .memory import ScalePlan, scale_allocator
from .optim import BatchAdam, BatchEMA, BatchLBFGS, BatchOptimizer
from .options import StylizeOptions
from .progress import Callback, StylizeResult
from .regions import StyleControl
from .schedule import scale_iterations

__all__ = ["BatchJob", "batch_key", "fitting_batch", "stylize_batch"]


@dataclass
class BatchJob:
    """The arguments of one :meth:`StyleTransfer.stylize` call, to run in a batch."""

    content: Image.Image
    styles: Sequence[Image.Image]
    opts: StylizeOptions = field(default_factory=StylizeOptions)
    callback: Callback | None = None
    init_image: Image.Image | None = None
    extra_losses: Mapping[str, torch.nn.Module] | None = None
    controls: Sequence[StyleControl | None] | None = None
    content_strength: Image.Image | None = None


def batch_key(opts: StylizeOptions, content_size: tuple[int, int]) -> tuple[object, ...]:
    """Jobs with equal keys can be optimised in one batch: one network, one precision, one optimiser, and
    every scale the same size for the same number of iterations."""
    sizes = tuple(fit_long_side(content_size, s) for s in opts.scales())
    layers = tuple(sorted({*opts.content_layers, *opts.style_layers}))
    return (opts.model, opts.pooling, layers, opts.precision, opts.optimizer, sizes, tuple(scale_iterations(opts)))


def fitting_batch(engine: StyleTransfer, opts: StylizeOptions, content_size: tuple[int, int], count: int) -> int:
    """How many of ``count`` jobs like this one fit one batch with each job's memory plan as it would be alone
    (same L-BFGS history, no extra checkpointing, so that batching never changes a result); at least 1."""
    sizes = [fit_long_side(content_size, s) for s in opts.scales()]
    try:
        alone = engine.memory_plan(sizes, opts)
    except ResourceLimitError:
        return 1
    for batch in range(count, 1, -1):
        try:
            plans = engine.memory_plan(sizes, opts, batch=batch)
        except ResourceLimitError:
            continue
        if all((p.history_size, p.checkpoint) == (a.history_size, a.checkpoint)
               for p, a in zip(plans, alone, strict=True)):
            return batch
    return 1


@dataclass
class _Member:
    """One job's place in the batch: its set-up, its current image and losses, and how it ended."""

    index: int
    job: _Job
    image: torch.Tensor | None = None
    losses: SumLoss | None = None
    last: dict[str, torch.Tensor] = field(default_factory=dict)
    """The loss terms of the last evaluation, on the device."""
    read: dict[str, float] = field(default_factory=dict)
    """The same as last read to the host (every ``engine.sync_every`` iterations)."""
    error: Exception | None = None
    """Raised by this job's losses during the last forward pass: the job leaves the batch after the step."""

    @property
    def opts(self) -> StylizeOptions:
        return self.job.run.opts


def stylize_batch(engine: StyleTransfer, jobs: Sequence[BatchJob]) -> list[StylizeResult | BaseException]:
    """Run ``jobs`` (equal :func:`batch_key`) as one batch on ``engine``; per job, its result or the exception
    that ended it. A job that cannot start (invalid request) fails alone; a batch that does not fit the memory plan
    raises :class:`~styletx_core.errors.ResourceLimitError` before any work (the caller splits it)."""
    if len({batch_key(j.opts, j.content.size) for j in jobs}) > 1:
        raise EngineError("jobs with different batch keys cannot share a batch")
    outcomes: list[StylizeResult | BaseException | None] = [None] * len(jobs)
    members: list[_Member] = []
    for index, job in enumerate(jobs):
        try:
            prepared = engine.prepare_job(job.content, job.styles, job.opts, job.callback, job.init_image,
                                          job.extra_losses, job.controls, job.content_strength)
        except Exception as error:  # this job's request: the others go on
            outcomes[index] = error
            continue
        members.append(_Member(index, prepared))
    if members:
        _run(engine, members, outcomes)
    return [outcome if outcome is not None else EngineError("job ended without an outcome") for outcome in outcomes]


def _run(engine: StyleTransfer, members: list[_Member], outcomes: list[StylizeResult | BaseException | None]) -> None:
    opts, sizes = members[0].opts, members[0].job.run.sizes
    plans = engine.memory_plan(sizes, opts, batch=len(members))
    for member in members:
        member.job.run.plans = plans
    # Every layer any member reads (regional styles may name their own): each job's losses pick their own.
    layers = tuple(dict.fromkeys(layer for m in members for layer in m.job.layers))
    net = copy.copy(engine.network(opts.model, opts.pooling, layers))
    alive = members
    for index, size in enumerate(sizes):
        alive = [m for m in alive if _guard(m, outcomes, _start_scale, engine, net, m, index, size)]
        if not alive:
            return
        net.checkpoint = plans[index].checkpoint
        with scale_allocator(plans[index]):
            alive = _run_scale(engine, net, alive, index, plans[index], outcomes)
            _update_balances(engine, net, alive)
    for member in alive:
        _guard(member, outcomes, _finish, engine, member, outcomes)


def _finish(engine: StyleTransfer, member: _Member, outcomes: list[StylizeResult | BaseException | None]) -> None:
    assert member.image is not None
    outcomes[member.index] = engine.finish_job(member.job, member.image)


def _guard(member: _Member, outcomes: list[StylizeResult | BaseException | None], step: Callable[..., object],
           *args: object) -> bool:
    """Run one job's ``step(*args)``; on an exception record it as that job's outcome. True if it goes on."""
    try:
        step(*args)
    except Exception as error:  # Cancelled, NumericalError, a failing loss: this job only
        outcomes[member.index] = error
        return False
    return True


def _start_scale(engine: StyleTransfer, net: torch.nn.Module, member: _Member, index: int,
                 size: tuple[int, int]) -> None:
    job, opts = member.job, member.opts
    member.image = engine._init_image(member.image, job.content_t, job.style_ts, job.init_image, size,
                                      job.generator, opts, job.plan)
    member.losses = engine._build_losses(net, job.content_t, job.style_ts, size, opts,  # type: ignore[arg-type]
                                         job.extra_losses, job.balance, job.plan)


def _make_optimizer(members: Sequence[_Member], image: torch.Tensor, plan: ScalePlan) -> BatchOptimizer:
    if members[0].opts.optimizer == "lbfgs":
        return BatchLBFGS(image, plan.history_size)
    return BatchAdam(image, [m.opts.learning_rate for m in members])


def _split_rows(features: Mapping[str, torch.Tensor], image: torch.Tensor) -> list[tuple[dict[str, torch.Tensor],
                                                                                      torch.Tensor]]:
    """Each job's features and image, as views of the batch. ``split`` rather than slicing: its backward joins
    the jobs' gradients with ``cat``, which keeps their channels-last layout, where a slice's backward scatters
    each into a fresh zero tensor in the default layout — measured 1.5× slower per iteration at 512 px, as every
    ReLU's backward then mixes layouts."""
    per_layer = {name: value.split(1) for name, value in features.items()}
    return [({name: parts[row] for name, parts in per_layer.items()}, own)
            for row, own in enumerate(image.split(1))]


def _run_scale(engine: StyleTransfer, net: torch.nn.Module, members: list[_Member], index: int, plan: ScalePlan,
               outcomes: list[StylizeResult | BaseException | None]) -> list[_Member]:
    """Optimise one scale for the batch; returns the members still running (their ``image`` the result)."""
    opts = members[0].opts
    image = torch.cat([m.image for m in members if m.image is not None]).detach().contiguous().requires_grad_(True)
    optimizer = _make_optimizer(members, image, plan)
    average = BatchEMA(image, [m.opts.ema_decay for m in members]) if opts.optimizer == "adam" else None

    def closure() -> torch.Tensor:
        param = optimizer.param
        param.grad = None
        with engine._autocast(opts):
            features = net(param)
            totals = []
            for member, (own_features, own_image) in zip(members, _split_rows(features, param), strict=True):
                assert member.losses is not None
                try:
                    total, parts = member.losses(own_features, own_image)
                except Exception as error:  # this job's loss: its row gets no gradient and does not move
                    member.error, member.last = error, {}
                    continue
                member.last = {name: part.detach() for name, part in parts.items()} | {"total": total.detach()}
                totals.append(total)
        loss = torch.stack(totals).sum() if totals else param.sum() * 0
        loss.backward()
        return loss

    count = members[0].job.run.iterations_at(index)
    best = _BatchBest(image) if average is None else None
    for step in range(count):
        started = time.perf_counter()
        before = optimizer.param.detach().clone() if best is not None else None
        optimizer.step(closure)
        if average is not None:
            with torch.no_grad():
                optimizer.param.clamp_(0, 1)
            average.update(optimizer.param)
        current = average.value if average is not None else optimizer.param
        if best is not None and before is not None:
            best.offer(_totals(members, image.device), before)
        fresh = _read_due(engine, members, step, count)
        if fresh:
            _read_losses(members)
        going = [row for row, m in enumerate(members)
                 if _guard(m, outcomes, _report, engine, m, index, current, row, started, fresh)]
        if len(going) < len(members):
            members = [members[row] for row in going]
            if not members:
                return []
            rows = torch.tensor(going, device=image.device)
            optimizer.keep(rows, optimizer.param.detach()[rows].requires_grad_(True))
            if average is not None:
                average.keep(rows)
            if best is not None:
                best.keep(rows)
    final = average.value if average is not None else optimizer.param
    chosen = best.choose(final) if best is not None else final
    for row, member in enumerate(members):
        member.image = chosen[row : row + 1].detach().clamp(0, 1)
    return members


class _BatchBest:
    """Each job's lowest-loss iterate of a scale (:class:`~styletx_core.engine._Best`, one row per job), kept on
    the device: choosing it needs no host sync. The loss of step k is measured at the image before its update."""

    def __init__(self, image: torch.Tensor) -> None:
        self.loss = torch.full((image.shape[0],), float("inf"), device=image.device)
        self.image = image.detach().clone()

    def offer(self, losses: torch.Tensor, before: torch.Tensor) -> None:
        better = losses < self.loss  # a NaN loss is never better
        self.loss = torch.where(better, losses, self.loss)
        self.image = torch.where(better.view(-1, 1, 1, 1), before, self.image)

    def keep(self, rows: torch.Tensor) -> None:
        self.loss, self.image = self.loss[rows], self.image[rows]

    def choose(self, final: torch.Tensor) -> torch.Tensor:
        """The best iterate of each row; the final one for a row that never had a finite loss."""
        return torch.where(torch.isinf(self.loss).view(-1, 1, 1, 1), final.detach(), self.image)


def _totals(members: Sequence[_Member], device: torch.device) -> torch.Tensor:
    """Each job's total loss of the last evaluation, stacked on the device (+inf for a job whose loss failed)."""
    def total(member: _Member) -> torch.Tensor:  # torch.full is a kernel: no host-to-device copy to wait on
        return member.last["total"].float() if "total" in member.last else torch.full((), float("inf"), device=device)

    return torch.stack([total(m) for m in members])


def _read_due(engine: StyleTransfer, members: Sequence[_Member], step: int, count: int) -> bool:
    """Whether to read the losses after ``step`` of ``count``: every ``engine.sync_every`` iterations, at a
    scale's first iteration (so that there are values to pass on) and its last (checked before the balance
    reads the result), and where a preview is due (rendering it syncs anyway)."""
    if step in (0, count - 1) or (step + 1) % engine.sync_every == 0:
        return True
    return any(m.job.run.callback is not None and engine.preview_due(m.job.run, ahead=1) for m in members)


def _read_losses(members: Sequence[_Member]) -> None:
    """Every job's loss values to the host in one transfer (one sync for the whole batch); kept in ``read``."""
    names = [list(m.last) for m in members]
    if not any(names):
        return
    values = torch.stack([v.float() for m in members for v in m.last.values()]).cpu().tolist()
    flat = iter(values)
    for member, keys in zip(members, names, strict=True):
        member.read = {key: next(flat) for key in keys}


def _report(engine: StyleTransfer, member: _Member, index: int, current: torch.Tensor, row: int, started: float,
            fresh: bool) -> None:
    if member.error is not None:
        raise member.error
    engine._report(member.job.run, index, current[row : row + 1], member.read, started, fresh)


def _update_balances(engine: StyleTransfer, net: torch.nn.Module, members: Sequence[_Member]) -> None:
    """Each job's adaptive style balance from its own result (one forward pass for the batch)."""
    if not members:
        return
    images = torch.cat([m.image for m in members if m.image is not None])
    with torch.no_grad(), engine._autocast(members[0].opts):
        features = net(images)
        for member, (own_features, own_image) in zip(members, _split_rows(features, images), strict=True):
            assert member.losses is not None
            errors = style_errors_of(own_features, own_image, member.losses)
            member.job.balance.update(errors)
