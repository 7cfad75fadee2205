"""The layout term (``layout_weight``; ``losses.LayoutLoss``): the photo's blurred luminance, held lightly."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from styletx_core.engine import StyleTransfer
from styletx_core.losses import LAYOUT_SIGMA_SHARE, LayoutLoss, blurred_luminance
from styletx_core.options import StylizeOptions
from styletx_core.scoring import layout_ssim


def _gradient(height: int = 48, width: int = 64) -> torch.Tensor:
    """A smooth photo stand-in: light on the left, dark on the right, warmer at the top."""
    x = torch.linspace(0.9, 0.1, width).expand(height, width)
    y = torch.linspace(0.2, 0.0, height)[:, None].expand(height, width)
    return torch.stack([x + y, x, x - y / 2]).clamp(0, 1)[None]


def test_the_loss_is_zero_on_the_content_and_one_for_a_flat_image_of_its_mean_brightness() -> None:
    content = _gradient()
    loss = LayoutLoss(content, sigma=1.0)
    assert loss(content).item() == pytest.approx(0.0, abs=1e-10)
    flat = torch.full_like(content, float(loss.target.mean()))  # every channel at the mean luma: luma = mean
    assert loss(flat).item() == pytest.approx(1.0, rel=1e-3)  # relative to the content's own contrast


def test_it_sees_where_light_and_dark_masses_are_not_fine_texture() -> None:
    content = _gradient()
    loss = LayoutLoss(content, sigma=2.0)
    rows, cols = torch.meshgrid(torch.arange(48), torch.arange(64), indexing="ij")
    texture = 0.1 * (((rows + cols) % 2) * 2 - 1).float()  # a 1-px checkerboard: brush strokes, zero mean
    mass = torch.zeros(48, 64)
    mass[:, :32] = 0.1  # the left half lightened by as much: the composition moves
    textured, shifted = (loss((content + delta).clamp(0, 1)).item() for delta in (texture, mass))
    assert shifted > 0.01
    assert textured < 0.05 * shifted


def test_a_content_strength_map_weighs_the_error_per_pixel() -> None:
    content, image = _gradient(), torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    plain = LayoutLoss(content, sigma=1.0)(image)
    ones = LayoutLoss(content, sigma=1.0, strength=torch.ones(1, 1, 48, 64))(image)
    zeros = LayoutLoss(content, sigma=1.0, strength=torch.zeros(1, 1, 48, 64))(image)
    assert ones.item() == pytest.approx(plain.item(), rel=1e-6)
    assert zeros.item() == 0.0


def test_the_gradient_reaches_the_image_in_fp32_under_bf16_autocast() -> None:
    content = _gradient()
    image = torch.rand_like(content).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = LayoutLoss(content, sigma=0.5)(image.bfloat16())
    assert value.dtype == torch.float32
    value.backward()
    assert image.grad is not None and float(image.grad.abs().sum()) > 0


def test_the_blur_keeps_a_flat_image_flat_and_the_sigma_is_a_share_of_the_long_side() -> None:
    flat = torch.full((1, 3, 20, 30), 0.5)
    assert torch.allclose(blurred_luminance(flat, 1.5), torch.full((1, 1, 20, 30), 0.5), atol=1e-6)
    assert 512 * LAYOUT_SIGMA_SHARE == 2.0


def test_a_job_with_a_layout_weight_reports_the_term_and_keeps_more_of_the_layout(
    engine: StyleTransfer, content_image: Image.Image, style_image: Image.Image
) -> None:
    opts = StylizeOptions(size=96, min_size=48, iterations=8, coarse_iterations=8, seed=3, style_weight=50.0)
    off = engine.stylize(content_image, [style_image], opts.replace(layout_weight=0.0))
    held = engine.stylize(content_image, [style_image], opts.replace(layout_weight=20.0))
    assert "layout" not in off.losses and "layout" in held.losses
    assert all("layout" in entry for entry in held.history)
    assert layout_ssim(held.image, content_image) > layout_ssim(off.image, content_image) + 0.02


def test_the_request_field_reaches_the_engine_and_a_bad_weight_names_its_field() -> None:
    from styletx_proto.v1 import styletx_pb2 as pb
    from styletx_server.errors import ServiceError
    from styletx_server.validation import params_to_options

    assert params_to_options(pb.StylizeParams(layout_weight=0.5), None).layout_weight == 0.5
    assert params_to_options(pb.StylizeParams(), None).layout_weight == StylizeOptions().layout_weight
    with pytest.raises(ServiceError) as caught:
        params_to_options(pb.StylizeParams(layout_weight=-1.0), None)
    assert caught.value.field == "params.layout_weight"
