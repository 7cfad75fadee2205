#!/usr/bin/env bash
# Create (or reuse) .venv and install the two distributions of the checkout, editable: the client SDK
# (client/, styletx-client) and the server + engine (., styletx) — with the test tools for "dev".
#   bash scripts/bootstrap.sh [server|dev]     (server: what the demo needs; dev: the test suite)
# Sourced by demo.sh and test.sh; needs only python3.
set -euo pipefail
extra=${1:-server}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
case "$extra" in
  server) target="." ;;
  dev) target=".[dev]" ;;
  *) echo "bootstrap.sh: unknown set '$extra' (server or dev)" >&2; exit 2 ;;
esac
stamp=".venv/.styletx-installed-$extra"
# "dev" installs everything "server" does: a dev venv is up to date for the demo too (no second pip run).
[ "$extra" = server ] && [ -f .venv/.styletx-installed-dev ] && [ ! -f "$stamp" ] && stamp=.venv/.styletx-installed-dev
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ client/pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
  # Both on one command line: pip takes styletx's requirement styletx-client from ./client, not an index.
  .venv/bin/python -m pip install --quiet -e ./client -e "$target"
  # A venv from before the split had `styletx` (the CLI script) in the old styletx distribution: replacing that
  # one removes the script the client distribution just wrote.
  [ -x .venv/bin/styletx ] || .venv/bin/python -m pip install --quiet --no-deps --force-reinstall -e ./client
  touch "$stamp"
fi
