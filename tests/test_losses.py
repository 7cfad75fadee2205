"""Loss modules against values computed by hand on tiny tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from styletx_core.losses import (
    ContentLoss,
    GramStyleLoss,
    LayerApply,
    Scale,
    SumLoss,
    TVLoss,
    W2StyleLoss,
    gram_matrix,
    mean_and_covariance,
)
from styletx_core.losses.w2 import _sqrtm
from styletx_core.targets import ENERGY_RATIO_LIMIT, energy_factors


def test_gram_matrix_by_hand() -> None:
    # One image, 2 channels, 2 positions: F = [[1, 2], [3, 4]] → F Fᵀ / 2.
    features = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 2, 1, 2)
    expected = torch.tensor([[1 + 4, 3 + 8], [3 + 8, 9 + 16]]) / 2
    assert torch.allclose(gram_matrix(features)[0], expected)


def test_gram_loss_by_hand() -> None:
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    features = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 2, 1, 2)
    gram = np.array([[2.5, 5.5], [5.5, 12.5]])
    expected = ((gram - np.eye(2)) ** 2).sum() / 2.0  # relative to ‖target‖² = 2
    assert GramStyleLoss(target)(features).item() == pytest.approx(expected, rel=1e-6)


def test_gram_loss_is_zero_at_target_and_size_invariant() -> None:
    torch.manual_seed(0)
    features = torch.rand(1, 4, 8, 8)
    loss = GramStyleLoss(gram_matrix(features)[0])
    assert loss(features).item() == pytest.approx(0.0, abs=1e-9)
    tiled = features.repeat(1, 1, 2, 2)  # same statistics, four times the positions
    assert loss(tiled).item() == pytest.approx(0.0, abs=1e-6)


def test_content_loss_by_hand() -> None:
    target = torch.tensor([1.0, -2.0, 3.0]).view(1, 3, 1, 1)
    features = torch.tensor([2.0, 0.0, 3.0]).view(1, 3, 1, 1)
    assert ContentLoss(target)(features).item() == pytest.approx((1 + 4 + 0) / (1 + 4 + 9), rel=1e-6)


def test_mean_and_covariance_by_hand() -> None:
    features = torch.tensor([[1.0, 3.0], [2.0, 2.0]]).view(1, 2, 1, 2)
    mean, cov = mean_and_covariance(features)
    assert torch.allclose(mean, torch.tensor([2.0, 2.0]))
    assert torch.allclose(cov, torch.tensor([[1.0, 0.0], [0.0, 0.0]]))


def test_w2_loss_matches_closed_form_for_commuting_covariances() -> None:
    # Diagonal covariances commute: W2² = |Δμ|² + Σ (√a − √b)²; normalised by tr(Σ_t) + |μ_t|².
    eps = 1e-4
    target_mean, target_cov = torch.tensor([1.0, 0.0]), torch.diag(torch.tensor([4.0, 1.0]))
    features = torch.tensor([[0.0, 2.0, 0.0, 2.0], [1.0, 1.0, -1.0, -1.0]]).view(1, 2, 1, 4)
    mean, cov = mean_and_covariance(features)  # mean (1, 0), cov diag(1, 1)
    loss = W2StyleLoss(target_mean, target_cov, eps=eps)(features).item()
    a, b = np.array([4.0, 1.0]) + eps, np.diag(cov.numpy()) + eps
    expected = (np.sum((mean.numpy() - target_mean.numpy()) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    expected /= a.sum() + 1.0
    assert loss == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_w2_loss_has_finite_gradients() -> None:
    torch.manual_seed(0)
    target = torch.rand(1, 3, 4, 4)
    mean, cov = mean_and_covariance(target)
    features = torch.rand(1, 3, 4, 4, requires_grad=True)
    W2StyleLoss(mean, cov)(features).backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()


def test_sqrtm_gradient_stays_bounded_when_eigenvalues_round_to_zero() -> None:
    # fp32 eigenvalues of a rank-deficient covariance product come out as ± rounding noise, clamped to 0; the
    # backward divides by sᵢ + sⱼ. An absolute floor (1e-12) made that 1e12× and sent L-BFGS to infinity (the
    # W2 loss turned NaN within 40 iterations on tubingen × starry night at 512 px).
    q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    matrix = (q @ torch.diag(torch.tensor([1e4, 1.0, 0.0, 0.0], dtype=torch.float64)) @ q.T).requires_grad_(True)
    _sqrtm(matrix).sum().backward()
    assert matrix.grad is not None and torch.isfinite(matrix.grad).all()
    assert matrix.grad.abs().max() < 1e3


def test_tv_loss_by_hand() -> None:
    image = torch.tensor([[0.0, 1.0], [0.0, 1.0]]).view(1, 1, 2, 2)
    # Horizontal differences: 1, 1 (mean of squares 1); vertical: 0, 0.
    assert TVLoss()(image).item() == pytest.approx(1.0)


def test_combinators_weight_and_sum() -> None:
    image = torch.zeros(1, 1, 2, 2)
    image[..., 1] = 1.0
    features = {"relu1_1": torch.ones(1, 2, 1, 1)}
    content = ContentLoss(torch.zeros(1, 2, 1, 1))
    total = SumLoss({
        "tv": torch.nn.ModuleList([Scale(LayerApply(TVLoss(), None), 3.0)]),
        "content": torch.nn.ModuleList([Scale(LayerApply(content, "relu1_1"), 0.5)]),
    })
    value, parts = total(features, image)
    assert parts["tv"].item() == pytest.approx(3.0)
    assert parts["content"].item() == pytest.approx(0.5 * 2 / 1e-8, rel=1e-3)  # zero target: only eps remains
    assert value.item() == pytest.approx(parts["tv"].item() + parts["content"].item())
    assert "weight=3" in repr(total) and "layer=relu1_1" in repr(total)
    assert math.isfinite(value.item())


def test_target_energy_is_the_second_moment_norm_for_gram_and_w2() -> None:
    # Gram = E[f fᵀ] = Σ + μμᵀ: both losses describe the same second-moment matrix, so their energies agree.
    torch.manual_seed(0)
    features = torch.rand(1, 3, 5, 7)
    flat = features.flatten(2)[0]
    by_hand = float((flat @ flat.T / flat.shape[1]).norm())
    assert GramStyleLoss(gram_matrix(features)[0]).target_energy == pytest.approx(by_hand, rel=1e-6)
    assert W2StyleLoss(*mean_and_covariance(features)).target_energy == pytest.approx(by_hand, rel=1e-5)


def test_energy_factors_by_hand() -> None:
    # Content features F = [[1, 1]] (1 channel, 2 positions): Gram [[1]], norm 1; style Gram [[2]]: ratio 2.
    content = {name: torch.ones(1, 1, 1, 2) for name in "abc"}
    targets = {"a": GramStyleLoss(torch.tensor([[2.0]])), "b": GramStyleLoss(torch.tensor([[1e6]])),
               "c": GramStyleLoss(torch.tensor([[1e-6]]))}
    assert energy_factors(targets, content, ["a"], 2.0) == {"a": pytest.approx(4.0)}
    assert energy_factors(targets, content, ["a"], 0.5) == {"a": pytest.approx(math.sqrt(2))}
    assert energy_factors(targets, content, ["a", "b"], 0.0) == {"a": 1.0, "b": 1.0}
    # A ratio beyond ENERGY_RATIO_LIMIT either way (a blank content or style) is clamped: no weight explodes.
    factors = energy_factors(targets, content, ["b", "c"], 2.0, floor=1 / ENERGY_RATIO_LIMIT)
    assert factors == {"b": pytest.approx(ENERGY_RATIO_LIMIT**2), "c": pytest.approx(ENERGY_RATIO_LIMIT**-2)}
    # The default floor (StylizeOptions.style_energy_floor, 1): a muted style keeps its base weight.
    assert energy_factors(targets, content, ["c"], 2.0) == {"c": pytest.approx(1.0)}
