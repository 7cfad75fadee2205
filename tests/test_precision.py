"""``precision=auto`` picks bf16 on a CPU only where bf16 is measured to be faster, not where the instructions exist."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from styletx_core import engine
from styletx_core.engine import BF16_MIN_SPEEDUP, cpu_bf16_speedup, native_bf16

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh_decision() -> Iterator[None]:
    """``native_bf16`` is cached per process: each test decides anew and leaves no patched answer behind."""
    native_bf16.cache_clear()
    yield
    native_bf16.cache_clear()


def _instructions(monkeypatch: pytest.MonkeyPatch, present: bool) -> None:
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: present, raising=False)


def test_a_cpu_without_bf16_instructions_runs_fp32_without_measuring(monkeypatch: pytest.MonkeyPatch) -> None:
    _instructions(monkeypatch, False)
    monkeypatch.setattr(engine, "cpu_bf16_speedup", lambda: pytest.fail("measured although bf16 is emulated"))
    assert native_bf16(CPU) is False


@pytest.mark.parametrize(("speedup", "expected"), [(0.7, False), (1.0, False), (BF16_MIN_SPEEDUP, True), (1.8, True)])
def test_bf16_instructions_count_only_where_bf16_measures_faster(
    monkeypatch: pytest.MonkeyPatch, speedup: float, expected: bool
) -> None:
    _instructions(monkeypatch, True)
    monkeypatch.setattr(engine, "cpu_bf16_speedup", lambda: speedup)
    assert native_bf16(CPU) is expected


def test_the_measurement_times_both_precisions_without_touching_the_global_generator() -> None:
    state = torch.random.get_rng_state()
    speedup = cpu_bf16_speedup(repeats=1)
    # Wide bounds: only finiteness is the point (a Zen 3 without bf16 instructions measures ≈ 0.03 here).
    assert math.isfinite(speedup) and 0.001 < speedup < 100
    assert torch.equal(torch.random.get_rng_state(), state), "the timing moved the seeds users draw from"
