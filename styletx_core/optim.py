"""Optimisers for a batch of independent jobs stacked along dim 0: L-BFGS and Adam, one state per job.

Several jobs optimised in one forward/backward pass need optimisers that keep each job's state apart: one
``torch.optim.LBFGS`` over the stacked image would mix the jobs' curvature (one history, one step length).
:class:`BatchLBFGS` is ``torch.optim.LBFGS`` as the engine uses it — ``max_iter=1`` (one closure evaluation per
step), no line search, ``lr=1``, tolerances 0 — with the history, two-loop recursion and step acceptance held
per job and vectorised over the batch. The per-job branches of torch's loop (accept the curvature pair when
``yᵀs > 1e-10``, skip a non-descent direction, stop on a zero gradient) become masks, so a step never reads a
value back to the host: on a GPU the loop queues its kernels without waiting.

Each history is a ring buffer of ``history_size`` pairs; jobs that skipped a pair have different heads, so the
recursion gathers each job's k-th newest pair by index. :meth:`keep` drops the rows of jobs that left the batch
(cancelled, failed) without disturbing the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["BatchAdam", "BatchEMA", "BatchLBFGS", "BatchOptimizer"]

#: torch.optim.LBFGS accepts a curvature pair only when yᵀs exceeds this (hard-coded there too).
CURVATURE_EPS = 1e-10


class BatchOptimizer:
    """What the batched loop needs of an optimiser: one step over the batch, and dropping rows."""

    param: torch.Tensor

    def step(self, closure: Callable[[], torch.Tensor]) -> None:
        raise NotImplementedError

    def keep(self, rows: torch.Tensor, param: torch.Tensor) -> None:
        """Keep only ``rows`` (indices into the current batch); ``param`` is the new, smaller leaf tensor."""
        raise NotImplementedError


class BatchLBFGS(BatchOptimizer):
    """Per-job L-BFGS over ``param`` (B×…), matching ``torch.optim.LBFGS(max_iter=1, line_search_fn=None)``.

    Args:
        param: the stacked images, a leaf tensor that requires grad.
        history_size: curvature pairs kept per job.
        lr: step length after the first step (the first is ``min(1, 1/‖g‖₁)·lr``, as in torch).
        tolerance_grad: a job whose gradient's largest magnitude is at most this does not move (torch returns).
        tolerance_change: a job whose directional derivative exceeds ``-tolerance_change`` does not move.
    """

    def __init__(self, param: torch.Tensor, history_size: int, lr: float = 1.0, tolerance_grad: float = 0.0,
                 tolerance_change: float = 0.0) -> None:
        self.param = param
        self.history_size = history_size
        self.lr = lr
        self.tolerance_grad = tolerance_grad
        self.tolerance_change = tolerance_change
        batch, numel = param.shape[0], param[0].numel()
        self.dirs = param.new_zeros((batch, history_size, numel))  # y: gradient differences
        self.stps = param.new_zeros((batch, history_size, numel))  # s: steps taken
        self.ro = param.new_zeros((batch, history_size))
        self.head = torch.zeros(batch, dtype=torch.long, device=param.device)  # next slot to write
        self.count = torch.zeros(batch, dtype=torch.long, device=param.device)
        self.h_diag = param.new_ones(batch)
        self.direction = param.new_zeros((batch, numel))
        self.t = param.new_zeros((batch,))
        self.prev_grad = param.new_zeros((batch, numel))
        self.n_iter = torch.zeros(batch, dtype=torch.long, device=param.device)
        self._max_count = 0  # host-side bound on count: the recursion loops no further
        self._stepped = False

    def step(self, closure: Callable[[], torch.Tensor]) -> None:
        with torch.enable_grad():
            closure()
        assert self.param.grad is not None, "the closure must backpropagate into param"
        grad = self.param.grad.detach().reshape(self.param.shape[0], -1)
        active = grad.abs().amax(1) > self.tolerance_grad
        first = self.n_iter == 0
        self.n_iter += active.long()
        if self._stepped:
            self._remember(grad, active & ~first)
        self._stepped = True
        direction = torch.where(first[:, None], -grad, self._two_loop(grad))
        t = torch.where(first, (1.0 / grad.abs().sum(1)).clamp(max=1.0) * self.lr,
                        torch.full_like(self.t, self.lr))
        descent = (grad * direction).sum(1) <= -self.tolerance_change
        self.direction = torch.where(active[:, None], direction, self.direction)
        self.t = torch.where(active, t, self.t)
        self.prev_grad = torch.where(active[:, None], grad, self.prev_grad)
        move = torch.where(active & descent, self.t, torch.zeros_like(self.t))
        with torch.no_grad():
            self.param.add_((move[:, None] * self.direction).view_as(self.param))

    def _remember(self, grad: torch.Tensor, eligible: torch.Tensor) -> None:
        """Store the pair (y, s) of the last step for the jobs whose curvature condition holds."""
        y = grad - self.prev_grad
        s = self.direction * self.t[:, None]
        ys = (y * s).sum(1)
        accept = eligible & (ys > CURVATURE_EPS)
        rows = torch.arange(grad.shape[0], device=grad.device)
        slot = self.head
        self.dirs[rows, slot] = torch.where(accept[:, None], y, self.dirs[rows, slot])
        self.stps[rows, slot] = torch.where(accept[:, None], s, self.stps[rows, slot])
        self.ro[rows, slot] = torch.where(accept, 1.0 / ys, self.ro[rows, slot])
        self.h_diag = torch.where(accept, ys / (y * y).sum(1), self.h_diag)
        self.head = (self.head + accept.long()) % self.history_size
        self.count = (self.count + accept.long()).clamp(max=self.history_size)
        self._max_count = min(self._max_count + 1, self.history_size)

    def _two_loop(self, grad: torch.Tensor) -> torch.Tensor:
        """H·(−g) for each job from its own history (newest pair first, then back)."""
        rows = torch.arange(grad.shape[0], device=grad.device)
        q = -grad
        alphas, pairs = [], []
        for k in range(self._max_count):
            slot = (self.head - 1 - k) % self.history_size
            valid = k < self.count
            y, s, ro = self.dirs[rows, slot], self.stps[rows, slot], self.ro[rows, slot]
            alpha = torch.where(valid, (s * q).sum(1) * ro, torch.zeros_like(ro))
            q = q - alpha[:, None] * y
            alphas.append(alpha)
            pairs.append((y, s, ro, valid))
        r = q * self.h_diag[:, None]
        for alpha, (y, s, ro, valid) in zip(reversed(alphas), reversed(pairs), strict=True):
            beta = (y * r).sum(1) * ro
            r = r + torch.where(valid, alpha - beta, torch.zeros_like(beta))[:, None] * s
        return r

    def keep(self, rows: torch.Tensor, param: torch.Tensor) -> None:
        self.param = param
        for name in ("dirs", "stps", "ro", "head", "count", "h_diag", "direction", "t", "prev_grad", "n_iter"):
            setattr(self, name, getattr(self, name)[rows])


class BatchAdam(BatchOptimizer):
    """Adam over ``param`` (B×…) with a learning rate per job; the same update as ``torch.optim.Adam``.

    Every job in a batch starts a scale together, so the step count (and the bias correction) is shared.
    """

    def __init__(self, param: torch.Tensor, lrs: Sequence[float], betas: tuple[float, float] = (0.9, 0.99),
                 eps: float = 1e-8) -> None:
        self.param = param
        self.lrs = torch.tensor(list(lrs), dtype=param.dtype, device=param.device)
        self.betas = betas
        self.eps = eps
        self.exp_avg = torch.zeros_like(param)
        self.exp_avg_sq = torch.zeros_like(param)
        self.steps = 0

    def step(self, closure: Callable[[], torch.Tensor]) -> None:
        with torch.enable_grad():
            closure()
        assert self.param.grad is not None, "the closure must backpropagate into param"
        grad = self.param.grad.detach()
        beta1, beta2 = self.betas
        self.steps += 1
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = self.lrs / (1 - beta1**self.steps)
        denom = (self.exp_avg_sq.sqrt() / (1 - beta2**self.steps) ** 0.5).add_(self.eps)
        shape = (-1,) + (1,) * (self.param.dim() - 1)
        with torch.no_grad():
            self.param.sub_(step_size.view(shape) * self.exp_avg / denom)

    def keep(self, rows: torch.Tensor, param: torch.Tensor) -> None:
        self.param = param
        self.lrs, self.exp_avg, self.exp_avg_sq = self.lrs[rows], self.exp_avg[rows], self.exp_avg_sq[rows]


class BatchEMA:
    """Bias-corrected exponential moving average of each job's iterates, with a decay per job."""

    def __init__(self, image: torch.Tensor, decays: Sequence[float]) -> None:
        shape = (-1,) + (1,) * (image.dim() - 1)
        self.decays = torch.tensor(list(decays), dtype=image.dtype, device=image.device).view(shape)
        self.accumulated = torch.zeros_like(image.detach())
        self.weight = torch.zeros_like(self.decays)

    def update(self, image: torch.Tensor) -> None:
        self.weight = self.weight * self.decays + 1
        self.accumulated.mul_(self.decays).add_(image.detach())

    @property
    def value(self) -> torch.Tensor:
        return self.accumulated / self.weight

    def keep(self, rows: torch.Tensor) -> None:
        self.decays, self.accumulated, self.weight = self.decays[rows], self.accumulated[rows], self.weight[rows]
