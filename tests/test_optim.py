"""The batched optimisers against torch's own, job by job, on a separable toy problem (float64, CPU)."""

from __future__ import annotations

import pytest
import torch

from styletx_core.optim import BatchAdam, BatchEMA, BatchLBFGS

JOBS, SHAPE, STEPS = 3, (2, 5, 4), 30


def _problem(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A start and the coefficients of a per-job non-quadratic objective (its curvature changes as it moves)."""
    gen = torch.Generator().manual_seed(seed)
    start = torch.randn(JOBS, *SHAPE, generator=gen, dtype=torch.float64)
    scale = torch.rand(JOBS, *SHAPE, generator=gen, dtype=torch.float64) * 4 + 0.5
    centre = torch.randn(JOBS, *SHAPE, generator=gen, dtype=torch.float64)
    return start, scale, centre


def _loss(x: torch.Tensor, scale: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    diff = x - centre
    return (scale * diff.pow(2) + 0.1 * diff.pow(4) + 0.3 * torch.sin(3 * x)).sum()


def _alone(optimizer_of, start, scale, centre, job: int) -> list[torch.Tensor]:
    x = start[job : job + 1].clone().requires_grad_(True)
    optimizer = optimizer_of(x)
    trajectory = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = _loss(x, scale[job : job + 1], centre[job : job + 1])
        loss.backward()
        return loss

    for _ in range(STEPS):
        optimizer.step(closure)
        trajectory.append(x.detach().clone())
    return trajectory


def _batched(optimizer, scale, centre, steps: int = STEPS) -> list[torch.Tensor]:
    trajectory = []

    def closure() -> torch.Tensor:
        optimizer.param.grad = None
        loss = _loss(optimizer.param, scale, centre)
        loss.backward()
        return loss

    for _ in range(steps):
        optimizer.step(closure)
        trajectory.append(optimizer.param.detach().clone())
    return trajectory


@pytest.mark.parametrize("history", [4, 50])
def test_batched_lbfgs_matches_torch_lbfgs_step_for_step(history: int) -> None:
    start, scale, centre = _problem(0)
    x = start.clone().requires_grad_(True)
    batched = _batched(BatchLBFGS(x, history), scale, centre)

    def torch_lbfgs(param: torch.Tensor) -> torch.optim.Optimizer:
        return torch.optim.LBFGS([param], lr=1.0, max_iter=1, history_size=history, tolerance_grad=0.0,
                                 tolerance_change=0.0)

    for job in range(JOBS):
        alone = _alone(torch_lbfgs, start, scale, centre, job)
        for step, (ours, theirs) in enumerate(zip(batched, alone, strict=True)):
            torch.testing.assert_close(ours[job : job + 1], theirs, rtol=1e-9, atol=1e-9,
                                       msg=lambda m, s=step, j=job: f"job {j}, step {s + 1}: {m}")
    assert not torch.allclose(batched[0], batched[-1]), "the toy problem must move"


def test_batched_lbfgs_keeps_jobs_apart_when_one_leaves() -> None:
    start, scale, centre = _problem(1)
    x = start.clone().requires_grad_(True)
    optimizer = BatchLBFGS(x, 6)
    _batched(optimizer, scale, centre, steps=10)
    rows = torch.tensor([0, 2])
    smaller = optimizer.param.detach()[rows].clone().requires_grad_(True)
    optimizer.keep(rows, smaller)
    after = _batched(optimizer, scale[rows], centre[rows], steps=STEPS - 10)[-1]
    reference = _batched(BatchLBFGS(start.clone().requires_grad_(True), 6), scale, centre)[-1]
    torch.testing.assert_close(after, reference[rows], rtol=1e-9, atol=1e-9)


def test_zero_gradient_job_stays_put_like_torch() -> None:
    # A job already at a stationary point: torch's LBFGS returns without moving; so must its row.
    x = torch.tensor([[0.0, 0.0], [1.0, -2.0]], dtype=torch.float64, requires_grad=True)
    optimizer = BatchLBFGS(x, 5)

    def closure() -> torch.Tensor:
        x.grad = None
        loss = optimizer.param.pow(2).sum()
        loss.backward()
        return loss

    for _ in range(3):
        optimizer.step(closure)
    assert torch.equal(x.detach()[0], torch.zeros(2, dtype=torch.float64))
    assert x.detach()[1].abs().max() < 1e-6


def test_batched_adam_and_ema_match_torch_adam_per_job() -> None:
    start, scale, centre = _problem(2)
    rates, decays = [0.05, 0.01, 0.1], [0.9, 0.5, 0.99]
    x = start.clone().requires_grad_(True)
    optimizer = BatchAdam(x, rates)
    average = BatchEMA(x, decays)
    trajectory = []

    def closure() -> torch.Tensor:
        x.grad = None
        loss = _loss(x, scale, centre)
        loss.backward()
        return loss

    for _ in range(STEPS):
        optimizer.step(closure)
        average.update(x)
        trajectory.append(x.detach().clone())
    for job, rate in enumerate(rates):
        alone = _alone(lambda p, r=rate: torch.optim.Adam([p], lr=r, betas=(0.9, 0.99)), start, scale, centre, job)
        torch.testing.assert_close(trajectory[-1][job : job + 1], alone[-1], rtol=1e-9, atol=1e-9)
        weights = [decays[job] ** (STEPS - 1 - k) for k in range(STEPS)]
        expected = sum(w * t for w, t in zip(weights, alone, strict=True)) / sum(weights)
        torch.testing.assert_close(average.value[job : job + 1], expected, rtol=1e-9, atol=1e-9)
