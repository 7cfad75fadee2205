#!/usr/bin/env bash
# Create (or reuse) .venv and install the project with the given extra ("server" for the demo, "dev" for tests).
# Sourced by demo.sh and test.sh; needs only python3.
set -euo pipefail
extra=${1:-server}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=".venv/.styletx-installed-$extra"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
  .venv/bin/python -m pip install --quiet -e ".[$extra]"
  touch "$stamp"
fi
