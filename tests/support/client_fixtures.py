"""Fixtures of the client tests: a fake-engine server on an ephemeral port and two small image files.

Registered for every test module by ``tests/conftest.py`` (``pytest_plugins``); a module's own fixture of the
same name takes precedence.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .fake import FakeEngine, ServerThread
from .requests import png


@pytest.fixture(scope="module")
def fake() -> FakeEngine:
    """An engine that steps quickly and records what it was asked."""
    return FakeEngine(step_seconds=0.005)


@pytest.fixture(scope="module")
def server(fake: FakeEngine) -> Iterator[ServerThread]:
    thread = ServerThread(lambda device: fake, workers=1)
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A content and a style PNG on disk."""
    folder = tmp_path_factory.mktemp("images")
    (folder / "content.png").write_bytes(png())
    (folder / "style.png").write_bytes(png((32, 32), (0, 0, 255)))
    return folder / "content.png", folder / "style.png"
