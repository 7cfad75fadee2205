"""The fake engine the service tests run on is honest: it reports every step and stops on Cancelled."""

from __future__ import annotations

import pytest
from PIL import Image
from support.fake import FakeEngine

from styletx_core.errors import Cancelled
from styletx_core.options import StylizeOptions
from styletx_core.progress import Iterate


def test_fake_engine_reports_every_step_and_stops_on_cancelled() -> None:
    engine = FakeEngine(step_seconds=0)
    opts = StylizeOptions(size=64, min_size=32, iterations=3, coarse_iterations=2)
    seen: list[int] = []
    result = engine.stylize(
        Image.new("RGB", (64, 48)), [Image.new("RGB", (8, 8))], opts, lambda step: seen.append(step.iteration)
    )
    assert result.iterations == 3 + 2 * (len(opts.scales()) - 1)
    assert seen == list(range(1, result.iterations + 1))

    def cancel(step: Iterate) -> None:
        if step.iteration == 2:
            raise Cancelled()

    with pytest.raises(Cancelled):
        engine.stylize(Image.new("RGB", (64, 48)), [Image.new("RGB", (8, 8))], opts, cancel)
    assert engine.cancelled == 1
