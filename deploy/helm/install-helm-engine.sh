#!/bin/sh
# Installs the real Helm template engine for the chart test, idempotently: the PyPI package
# helm-python-sdk (Helm v4's Go library built as a C shared library, manylinux x86_64,
# Python >= 3.10; no `helm` binary is published on crates.io, PyPI, npm or Debian) into the
# project's virtualenv .venv/ (the one `cargo xtask setup` creates for aioquic).
#
# Then `cargo test -p lb-userspace --test deploy_manifests` also renders deploy/helm/lb with
# it (deploy/helm/render.py) and compares the result with deploy/manifests/.
set -eu
HELM_PYTHON_SDK="helm-python-sdk==0.2.2"
root=$(cd "$(dirname "$0")/../.." && pwd)
venv="$root/.venv"
if [ ! -x "$venv/bin/python" ]; then
    echo "install-helm-engine: creating $venv"
    python3 -m venv "$venv"
fi
if "$venv/bin/python" -c "import helm_python" 2>/dev/null; then
    echo "install-helm-engine: $HELM_PYTHON_SDK in .venv: present"
    exit 0
fi
echo "install-helm-engine: installing $HELM_PYTHON_SDK into .venv (~75 MB wheel)"
"$venv/bin/python" -m pip install --quiet "$HELM_PYTHON_SDK"
"$venv/bin/python" -c "import helm_python"
echo "install-helm-engine: done"
