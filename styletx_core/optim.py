"""Optimisers for a batch of independent jobs stacked along dim 0: L-BFGS and Adam, one state per job.

Several jobs optimised in one forward/backward pass need optimisers that keep each job's state apart: one
``torch.optim.LBFGS`` over the stacked image would mix the jobs' curvature (one history, one step length).
:class:`BatchLBFGS` is ``torch.optim.LBFGS`` as the engine uses it — ``max_iter=1`` (one closure evaluation per
step), no line search, ``lr=1``, tolerances 0 — with the history, two-loop recursion and step acceptance held
per job and vectorised over the batch. The per-job branches of torch's loop (accept the curvature pair when
``yᵀs > 1e-10``, skip a non-descent direction, stop on a zero gradient) become masks, so a step never reads a
value back to the host: on a GPU the loop queues its kernels without waiting.

Each history is a ring buffer of ``history_size`` pairs; jobs that skipped a pair have different heads. The
two-loop recursion runs on dot products rather than on vectors: with the inner products of the pairs kept up to
date (``sᵢ·yⱼ`` and ``yᵢ·yⱼ``, one new row and column per accepted pair), each loop is a triangular solve over
B×m×m numbers, and the image-sized work is four matrix-vector products per job over its history. Gathering
every job's k-th pair instead (an image-sized copy, 2·m times per step, plus as many small kernels) measured
15× slower than torch's own loop at 512 px. The arithmetic is torch's; only the order of the sums differs
(float64 agrees to 1e-9, tests/test_optim.py), and no sum depends on the batch's size, so a job's result does
not depend on its companions. :meth:`keep` drops the rows of jobs that left the batch (cancelled, failed)
without disturbing the others.
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
        self.sy = param.new_zeros((batch, history_size, history_size))  # sy[b, i, j] = sᵢ·yⱼ
        self.yy = param.new_zeros((batch, history_size, history_size))  # yy[b, i, j] = yᵢ·yⱼ
        self._stepped = False

    def step(self, closure: Callable[[], torch.Tensor]) -> None:
        with torch.enable_grad():
            closure()
        assert self.param.grad is not None, "the closure must backpropagate into param"
        grad = self.param.grad.detach().reshape(self.param.shape[0], -1)
        active = grad.abs().amax(1) > self.tolerance_grad
        first = self.n_iter == 0
        self.n_iter += active.long()
        q0 = -grad
        direction = q0  # the first step: no history yet
        if self._stepped:
            s_q0, y_q0 = self._absorb(*self._remember(grad, active & ~first), q0)
            direction = torch.where(first[:, None], q0, self._two_loop(q0, s_q0, y_q0))
        self._stepped = True
        t = torch.where(first, (1.0 / grad.abs().sum(1)).clamp(max=1.0) * self.lr,
                        torch.full_like(self.t, self.lr))
        descent = (grad * direction).sum(1) <= -self.tolerance_change
        self.direction = torch.where(active[:, None], direction, self.direction)
        self.t = torch.where(active, t, self.t)
        self.prev_grad = torch.where(active[:, None], grad, self.prev_grad)
        move = torch.where(active & descent, self.t, torch.zeros_like(self.t))
        with torch.no_grad():
            self.param.add_((move[:, None] * self.direction).view_as(self.param))

    def _remember(self, grad: torch.Tensor, eligible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Store the pair (y, s) of the last step for the jobs whose curvature condition holds; returns
        (y, s, accepted) for :meth:`_absorb`, which adds the pair's inner products."""
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
        return y, s, accept

    def _absorb(self, y: torch.Tensor, s: torch.Tensor, accept: torch.Tensor,
                q0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new pair (at ``head``) to the inner products — against every stored pair, itself included:
        sy's row and column, yy's — and advance the ring. Returns (sⱼ·q₀, yⱼ·q₀) per slot: taken in the same
        two passes over the history, which the recursion then reads only once more."""
        with_dirs = _per_job(self.dirs, torch.stack([s, y, q0], 2))  # [b, j, ·] = (s·yⱼ, y·yⱼ, q₀·yⱼ)
        with_stps = _per_job(self.stps, torch.stack([y, q0], 2))  # [b, j, ·] = (sⱼ·y, sⱼ·q₀)
        rows = torch.arange(accept.shape[0], device=accept.device)
        slot, keep_old = self.head, ~accept[:, None]
        self.sy[rows, slot] = torch.where(keep_old, self.sy[rows, slot], with_dirs[..., 0])
        self.sy[rows, :, slot] = torch.where(keep_old, self.sy[rows, :, slot], with_stps[..., 0])
        self.yy[rows, slot] = torch.where(keep_old, self.yy[rows, slot], with_dirs[..., 1])
        self.yy[rows, :, slot] = torch.where(keep_old, self.yy[rows, :, slot], with_dirs[..., 1])
        self.head = (self.head + accept.long()) % self.history_size
        self.count = (self.count + accept.long()).clamp(max=self.history_size)
        return with_stps[..., 1], with_dirs[..., 2]

    def _two_loop(self, q0: torch.Tensor, s_q0: torch.Tensor, y_q0: torch.Tensor) -> torch.Tensor:
        """H·q₀ (q₀ = −g) for each job from its own history (newest pair first, then back), on dot products.

        The first loop's q after the newer pairs is q₀ − Σⱼ αⱼyⱼ, so sᵢ·q = sᵢ·q₀ − Σⱼ αⱼ(sᵢ·yⱼ); the second
        loop's r is h·q_m + Σⱼ cⱼsⱼ (cⱼ = αⱼ − βⱼ), so yᵢ·r = h·(yᵢ·q_m) + Σⱼ cⱼ(sⱼ·yᵢ). Coefficients of pairs
        not yet visited (or not valid) are 0, so every sum can run over all slots. ``s_q0``/``y_q0``: each slot's
        pair against q₀ (:meth:`_absorb`)."""
        # Newest first: order[b, k] is job b's k-th newest slot; a pair that is not there (k ≥ count) gets ρ = 0,
        # which makes its coefficients 0 below.
        ks = torch.arange(self.history_size, device=q0.device)
        order = (self.head[:, None] - 1 - ks) % self.history_size
        ro = torch.where(ks < self.count[:, None], self.ro.gather(1, order), torch.zeros_like(self.ro))
        sy = _reordered(self.sy, order)  # sy[b, k, j] = s_k·y_j, both in newest-first order
        s_q0, y_q0 = s_q0.gather(1, order), y_q0.gather(1, order)
        eye = torch.eye(self.history_size, dtype=q0.dtype, device=q0.device)
        # First loop (newest first): αₖ + ρₖ Σ_{j<k} αⱼ(sₖ·yⱼ) = ρₖ(sₖ·q₀), a lower-triangular system.
        lower = eye + torch.tril(ro[:, :, None] * sy, -1)
        alphas = torch.linalg.solve_triangular(lower, (ro * s_q0)[:, :, None], upper=False).squeeze(2)
        y_qm = y_q0 - (_reordered(self.yy, order) * alphas[:, None, :]).sum(2)  # yₖ·q_m
        # Second loop (oldest first): cₖ + ρₖ Σ_{j>k} cⱼ(sⱼ·yₖ) = αₖ − ρₖ·h·(yₖ·q_m), an upper-triangular one.
        upper = eye + torch.triu(ro[:, :, None] * sy.transpose(1, 2), 1)
        rhs = alphas - ro * self.h_diag[:, None] * y_qm
        coefficients = torch.linalg.solve_triangular(upper, rhs[:, :, None], upper=True).squeeze(2)
        # h·q_m + Σ cⱼsⱼ = h·q₀ − Σ h·αⱼyⱼ + Σ cⱼsⱼ, with the coefficients put back in slot order.
        along_y = torch.zeros_like(alphas).scatter_(1, order, -self.h_diag[:, None] * alphas)
        along_s = torch.zeros_like(alphas).scatter_(1, order, coefficients)
        step = _per_job(along_y[:, None, :], self.dirs) + _per_job(along_s[:, None, :], self.stps)
        return self.h_diag[:, None] * q0 + step.squeeze(1)

    def keep(self, rows: torch.Tensor, param: torch.Tensor) -> None:
        self.param = param
        for name in ("dirs", "stps", "ro", "head", "count", "h_diag", "direction", "t", "prev_grad", "n_iter", "sy",
                     "yy"):
            setattr(self, name, getattr(self, name)[rows])


def _per_job(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``left[b] @ right[b]`` for each job, one product at a time: a batched product may split its sums
    differently at another batch size, and a job's result must not depend on its companions (L-BFGS amplifies
    the last bit into visible pixels)."""
    return torch.stack([a @ b for a, b in zip(left, right, strict=True)])


def _reordered(products: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``products[b, order[b, k], order[b, j]]``: a per-job B×m×m table of pair products in history order."""
    size = order.shape[1]
    rows = products.gather(1, order[:, :, None].expand(-1, -1, size))
    return rows.gather(2, order[:, None, :].expand(-1, size, -1))


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
