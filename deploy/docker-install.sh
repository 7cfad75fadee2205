#!/bin/sh
# Runs inside the Dockerfile's builder stages only; nothing it reads or writes besides /opt/venv,
# /opt/styletx/app and /opt/styletx/weights reaches the final image.
#
#   docker-install.sh deps     install the third-party dependencies of .[server] into /opt/venv (cached
#                              layer: only pyproject.toml is in /src at this point)
#   docker-install.sh app      install the styletx package alone into /opt/styletx/app (PYTHONPATH)
#   docker-install.sh onnxruntime  replace onnxruntime by $ONNXRUNTIME_PACKAGE (CUDA target)
#   docker-install.sh weights  prepare the VGG weights with `styletx weights fetch` into $STYLETX_CACHE
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

# Extract "name==version" pins of the engine extra from pyproject.toml (tomllib: Python >= 3.11).
pin() {
    "$VENV/bin/python" - "$1" <<'EOF'
import sys, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["engine"]
print(next(d for d in deps if d.split("==")[0].strip() == sys.argv[1]))
EOF
}

install_deps() {
    # Only pyproject.toml is present: make the declared packages importable-empty so setuptools can build a
    # placeholder wheel whose sole purpose is resolving the dependency set into its own cached layer.
    mkdir -p styletx_core server client styletx
    [ -e README.md ] || : > README.md
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
        # The torch wheel index (CPU-only or a specific CUDA build) is consulted for torch alone; a local
        # version such as 2.14.1+cpu satisfies the pyproject pin ==2.14.1, so the next step keeps it.
        PIP_EXTRA_INDEX_URL="" PIP_FIND_LINKS="" \
            $PIP install --index-url "$TORCH_INDEX_URL" "$(pin torch)" "$(pin torchvision)"
    fi
    $PIP install ".[server]"
    $PIP uninstall -y styletx
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
    $PIP install --no-deps --target "$APP" .
    PYTHONPATH="$APP" $PIP check
}

fetch_weights() {
    mkdir -p "$STYLETX_CACHE"
    if [ "${FETCH_WEIGHTS:-1}" = "1" ]; then
        # = `styletx weights fetch`, without depending on the client CLI being importable.
        PYTHONPATH="$APP" "$VENV/bin/python" -m styletx_core.commands.weights fetch
    else
        echo "FETCH_WEIGHTS=0: weights must be mounted at $STYLETX_CACHE at run time" >&2
    fi
}

case "${1:-}" in
    deps) install_deps ;;
    app) install_app ;;
    onnxruntime) swap_onnxruntime ;;
    weights) fetch_weights ;;
    *) echo "usage: $0 deps|app|onnxruntime|weights" >&2; exit 2 ;;
esac
