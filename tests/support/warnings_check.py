"""Record the warnings one block of code raises, and only those."""

from __future__ import annotations

import contextlib
import gc
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_recorder() -> Iterator[list[warnings.WarningMessage]]:
    """Warnings raised inside the block, every one recorded (``always``).

    Garbage left by earlier tests (an unclosed socket's ResourceWarning, say) is collected first: its warning
    would otherwise land in whichever test happens to run when the collector does — it did, in a full-suite
    run, in a test asserting that an export is quiet.
    """
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
