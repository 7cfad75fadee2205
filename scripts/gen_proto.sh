#!/usr/bin/env bash
# Generate the Python stubs of the styletx API into the client distribution: client/styletx_proto/v1/
# styletx_pb2.py, styletx_pb2_grpc.py and typed .pyi files (mypy-protobuf). protoc names the modules after the
# .proto path (styletx/v1/...); they are moved under the unique package name `styletx_proto` and their imports
# of each other rewritten to match, so no generic top-level `styletx` package is installed. One command, reproducible: the same grpcio-tools/mypy-protobuf (pinned in pyproject.toml's dev extra) give the same bytes,
# and tests/test_proto.py fails when the checked-in stubs drift from proto/.
#
# It also writes client/styletx_client/_params.py (scripts/gen_params.py): the SDK's typed keyword options.
#
# Usage: scripts/gen_proto.sh [--out DIR] [--lint]
#   --out DIR  write into DIR instead of the repository (the drift test uses a temp dir)
#   --lint     also run `buf lint` (needs npx or buf on PATH)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
OUT="$ROOT"
LINT=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --lint) LINT=1; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

BIN="$(dirname "$PYTHON")"
PKG="$OUT/client/styletx_proto"
RAW="$(mktemp -d)"
trap 'rm -rf "$RAW"' EXIT
mkdir -p "$PKG/v1"
cd "$ROOT/proto"
"$PYTHON" -m grpc_tools.protoc -I . \
  --python_out="$RAW" --grpc_python_out="$RAW" \
  --plugin=protoc-gen-mypy="$BIN/protoc-gen-mypy" --mypy_out="$RAW" \
  --plugin=protoc-gen-mypy_grpc="$BIN/protoc-gen-mypy_grpc" --mypy_grpc_out="$RAW" \
  styletx/v1/styletx.proto

# styletx.v1.styletx_pb2 -> styletx_proto.v1.styletx_pb2 (imports and the module name given to the builder).
for file in "$RAW"/styletx/v1/styletx_pb2*; do
  sed -e 's/from styletx\.v1 import/from styletx_proto.v1 import/' \
      -e 's/styletx\.v1\.styletx_pb2/styletx_proto.v1.styletx_pb2/g' "$file" > "$PKG/v1/$(basename "$file")"
done
for pkg in "$PKG" "$PKG/v1"; do
  [ -f "$pkg/__init__.py" ] || echo '"""Generated gRPC stubs of the styletx API (scripts/gen_proto.sh)."""' > "$pkg/__init__.py"
done
touch "$PKG/py.typed"

# The SDK's typed job options and the CLI's help texts, from the same proto (and the engine's defaults).
"$PYTHON" "$ROOT/scripts/gen_params.py" --out "$OUT"

if [ "$LINT" = 1 ]; then
  cd "$ROOT"
  if command -v buf >/dev/null; then buf lint; else npx --yes @bufbuild/buf lint; fi
fi
