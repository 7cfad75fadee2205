#!/bin/sh
# Runs inside the Dockerfile's builder stages only; nothing it reads or writes besides /opt/venv,
# /opt/styletx/app and /opt/styletx/weights reaches the final image.
#
#   docker-install.sh requirements  write requirements.txt: the third-party requirements of the server
#                              distribution (.) and of the client distribution it depends on (client/)
#   docker-install.sh deps     install requirements.txt into /opt/venv (a cached layer: only that file is in
#                              /src at this point)
#   docker-install.sh app      install the two distributions alone into /opt/styletx/app (PYTHONPATH)
#   docker-install.sh onnxruntime  replace onnxruntime by $ONNXRUNTIME_PACKAGE (CUDA target)
#   docker-install.sh weights  fill $STYLETX_CACHE: VGG weights, fast/CycleGAN networks, ONNX export
#
# Package-index settings arrive as build args named like pip's own variables (PIP_INDEX_URL,
# PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS, PIP_TRUSTED_HOST), so pip reads them from the environment of this
# RUN step only. The CA bundle and the constraints file arrive as BuildKit secrets: they are mounted for one
# step and never written to a layer.
set -eu

VENV=/opt/venv
APP=/opt/styletx/app
PIP="$VENV/bin/python -m pip"

if [ -s /run/secrets/pip_cert ]; then
    export PIP_CERT=/run/secrets/pip_cert
    # `styletx weights fetch` and anything else using requests/urllib should trust the same CA.
    export SSL_CERT_FILE=/run/secrets/pip_cert REQUESTS_CA_BUNDLE=/run/secrets/pip_cert
fi
if [ -s /run/secrets/pip_constraint ]; then
    export PIP_CONSTRAINT=/run/secrets/pip_constraint
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off

# requirements.txt: every third-party requirement of the server distribution (pyproject.toml), with its
# requirement of the client distribution (styletx-client[extras], client/pyproject.toml) replaced by that
# one's own requirements and those of the extras named. Only a change of these lines invalidates the deps layer;
# edits to entry points, versions or tool settings do not.
write_requirements() {
    python3 - >requirements.txt <<'EOF'
import re, tomllib
server = tomllib.load(open("pyproject.toml", "rb"))["project"]
client = tomllib.load(open("client/pyproject.toml", "rb"))["project"]
wanted = []
for req in server["dependencies"]:
    own = re.match(re.escape(client["name"]) + r"(?:\[([\w,-]+)\])?", req.replace(" ", ""))
    if own:
        wanted += client["dependencies"]
        for extra in filter(None, (own.group(1) or "").split(",")):
            wanted += client["optional-dependencies"][extra]
    else:
        wanted.append(req)
print("\n".join(dict.fromkeys(wanted)))
EOF
    cat requirements.txt
}

# The exact pin of a package in requirements.txt ("torch==2.14.1").
pin() { grep -E "^$1 *==" requirements.txt | tr -d ' '; }

install_deps() {
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
        # The torch wheel index (CPU-only or a specific CUDA build) is consulted for torch alone; a local
        # version such as 2.14.1+cpu satisfies the pin ==2.14.1, so the next step keeps it.
        PIP_EXTRA_INDEX_URL="" PIP_FIND_LINKS="" \
            $PIP install --index-url "$TORCH_INDEX_URL" "$(pin torch)" "$(pin torchvision)"
    fi
    $PIP install -r requirements.txt
}

swap_onnxruntime() {
    # onnxruntime and onnxruntime-gpu ship the same module: exactly one may be installed. Its dependencies
    # are those of the CPU wheel, already present.
    $PIP uninstall -y onnxruntime
    $PIP install --no-deps "${ONNXRUNTIME_PACKAGE:-onnxruntime-gpu}"
    $PIP check
}

install_app() {
    # --target keeps the package (and its console scripts, in bin/) out of the venv: the final image copies
    # the big venv layer from `deps` unchanged and this small directory from `app`.
    $PIP install --no-deps --target "$APP" ./client .
    PYTHONPATH="$APP" $PIP check
}

fetch_weights() {
    mkdir -p "$STYLETX_CACHE"
    if [ "${FETCH_WEIGHTS:-1}" = "1" ]; then
        # VGG weights (= `styletx weights fetch`), fast-style and CycleGAN networks, the ONNX scorer export.
        PYTHONPATH="$APP" "$VENV/bin/python" deploy/prepare_cache.py --cache-dir "$STYLETX_CACHE"
        # Written by root here, read by UID 10001 there: some writers create 0600 temp files and rename them.
        chmod -R a+rX,go-w "$STYLETX_CACHE"
    else
        echo "FETCH_WEIGHTS=0: weights must be mounted at $STYLETX_CACHE at run time" >&2
    fi
}

case "${1:-}" in
    requirements) write_requirements ;;
    deps) install_deps ;;
    app) install_app ;;
    onnxruntime) swap_onnxruntime ;;
    weights) fetch_weights ;;
    *) echo "usage: $0 requirements|deps|app|onnxruntime|weights" >&2; exit 2 ;;
esac
