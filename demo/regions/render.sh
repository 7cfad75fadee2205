#!/usr/bin/env bash
# The README's "A style per region" picture: golden_gate with Starry Night in the sky and Shipwreck below, and
# a two-scale blend (Starry Night's large structures from relu4_1/relu5_1, Shipwreck's fine texture from
# relu1_1/relu2_1), stylised in this process (no server), then one labelled sheet.
#   bash demo/regions/render.sh [SIZE] [OUT_DIR]        (defaults: 384 px, build/regions; the sheet: docs/images)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
size=${1:-384}
out=${2:-build/regions}
mkdir -p "$out" docs/images
styletx=.venv/bin/styletx
styles=(demo/starry_night.jpg demo/shipwreck.jpg)
.venv/bin/python demo/regions/make_masks.py demo/golden_gate.jpg --out "$out"
"$styletx" stylize demo/golden_gate.jpg "${styles[@]}" -o "$out/regions.png" --size "$size" --seed 1 -q \
    --style-mask "$out/sky.png" --style-mask "$out/ground.png"
"$styletx" stylize demo/golden_gate.jpg "${styles[@]}" -o "$out/two_scales.png" --size "$size" --seed 1 -q \
    --style-own-layers relu4_1,relu5_1 --style-own-layers relu1_1,relu2_1
.venv/bin/python - "$out" <<'PY'
import sys
from pathlib import Path

from styletx_client._progress import contact_sheet

out = Path(sys.argv[1])
paths = [Path("demo/golden_gate.jpg"), out / "sky.png", out / "regions.png", out / "two_scales.png"]
labels = ["content", "sky mask (make_masks.py)", "Starry sky, Shipwreck below", "Starry deep + Shipwreck shallow"]
print(contact_sheet(paths, Path("docs/images/regions.jpg"), labels=labels, cell=384))
PY
