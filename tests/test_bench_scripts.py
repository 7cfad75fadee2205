"""Every benchmark script imports: a renamed helper in one bench module must not leave another unrunnable.

The benchmarks are long and run by hand, so nothing else would notice (``bench/perf.py`` imported a function
``bench/quality.py`` had renamed). Importing is cheap; running them is the benchmarks' own business.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize("module", sorted(p.stem for p in BENCH.glob("*.py")))
def test_bench_module_imports(module: str) -> None:
    loaded = importlib.import_module(module)
    assert loaded.__file__ is not None and Path(loaded.__file__).parent == BENCH
