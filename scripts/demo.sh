#!/usr/bin/env bash
# The main job: stylise the repository's demo images through a real styletx server (CPU when there is no GPU).
#   bash scripts/demo.sh [extra `styletx stylize` flags, e.g. --size 256]
# Installs into .venv, prepares the offline VGG19 weights in ~/.cache/styletx, starts styletx-server on a free
# port, runs the job through the client with a progress bar, writes out/chelsea_starry_night.png, stops the server.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh server
.venv/bin/styletx weights fetch --arch vgg19 --vgg-only
port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p out
.venv/bin/styletx-server --host 127.0.0.1 --port "$port" --metrics-port 0 --log-level WARNING &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  .venv/bin/styletx health --server "127.0.0.1:$port" --timeout 1 >/dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { echo "styletx-server exited during start-up" >&2; exit 1; }
  sleep 0.5
done
.venv/bin/styletx stylize demo/chelsea.jpg demo/starry_night.jpg -o out/chelsea_starry_night.png \
  --server "127.0.0.1:$port" "$@"
echo "wrote out/chelsea_starry_night.png"
