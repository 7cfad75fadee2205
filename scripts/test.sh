#!/usr/bin/env bash
# The whole test suite: lint, types, import contracts, proto drift, unit + service + deployment tests.
#   bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh dev
export PATH="$PWD/.venv/bin:$PATH"
if ! command -v buf >/dev/null && command -v npm >/dev/null; then
  echo "== buf (proto lint)"; npm install --silent --global @bufbuild/buf >/dev/null
fi
echo "== ruff"; ruff check .
echo "== mypy"; mypy -p styletx_core -p styletx_cli -p styletx_server -p styletx_client
echo "== import contracts"; lint-imports
echo "== weights"; styletx weights fetch --arch all
echo "== chart/image test tools"; bash deploy/install-test-tools.sh
echo "== pytest"; python -m pytest -q -p no:cacheprovider --durations=20 "$@"
echo "== container image"; bash deploy/test-image.sh
