"""Shared fixtures: small images and random VGG weights, so engine tests run offline and fast."""

from __future__ import annotations

import os
from pathlib import Path

# gRPC's fork handlers run in every child this process forks (ffmpeg for the video tests) and, once a channel
# existed, write poller errors into the child's stderr, which imageio-ffmpeg then fails to parse. The suite
# forks after gRPC use; disable the handlers before grpc is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import pytest
from PIL import Image

#: Shared fixtures of the client tests (``fake``, ``server``, ``images``); a module may define its own instead.
pytest_plugins = ["support.client_fixtures"]

REPO = Path(__file__).resolve().parents[1]
SHARED_IMAGES = REPO.parent / "shared" / "images"


def _small(path: Path, long_side: int) -> Image.Image:
    image = Image.open(path).convert("RGB")
    image.thumbnail((long_side, long_side), Image.Resampling.LANCZOS)
    return image


@pytest.fixture(scope="session")
def shared_images() -> Path:
    """../shared/images beside the repository (always present in CI)."""
    assert SHARED_IMAGES.is_dir(), f"{SHARED_IMAGES} is missing: tests read the shared sample images"
    return SHARED_IMAGES


@pytest.fixture(scope="session")
def content_image(shared_images: Path) -> Image.Image:
    return _small(shared_images / "content" / "tubingen.jpg", 128)


@pytest.fixture(scope="session")
def style_image(shared_images: Path) -> Image.Image:
    return _small(shared_images / "style" / "starry_night.jpg", 128)


@pytest.fixture(scope="session")
def second_style_image(shared_images: Path) -> Image.Image:
    return _small(shared_images / "style" / "shipwreck.jpg", 128)


@pytest.fixture(scope="session")
def random_vgg_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """VGG19 weights drawn at random (seeded), saved in the named layout as .safetensors."""
    from random_vgg import write_random_vgg19  # bench/random_vgg.py (on pytest's pythonpath)

    return write_random_vgg19(tmp_path_factory.mktemp("weights") / "vgg19-random.safetensors")


@pytest.fixture(scope="session")
def engine(random_vgg_weights: Path):  # type: ignore[no-untyped-def]
    """A CPU :class:`StyleTransfer` on random weights (shared: the target cache is part of what is tested)."""
    from styletx_core.engine import StyleTransfer

    return StyleTransfer(device="cpu", weights="file", weights_path=random_vgg_weights)


@pytest.fixture(scope="session")
def results_dir() -> Path:
    """Where tests write their measurements (fuzz and overload outcome counts): ``$STYLETX_TEST_RESULTS`` or
    build/test-results, never the tracked bench/results (publish a figure there by copying it)."""
    path = Path(os.environ.get("STYLETX_TEST_RESULTS") or REPO / "build" / "test-results")
    path.mkdir(parents=True, exist_ok=True)
    return path


def require_tool(available: bool, message: str) -> None:
    """Skip when a tool or prepared model is missing on a developer's machine; fail in CI, where the test
    command installs and prepares them (so a skip there could hide a failure)."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{message} — the test command installs it, so CI must have it")
    pytest.skip(message)
