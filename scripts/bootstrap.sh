#!/usr/bin/env bash
# Create (or refresh) the project virtualenv and install synctalk into it.
#   usage: scripts/bootstrap.sh [VENV_DIR]
# torch goes in first, so that nothing pulls a multi-GB CUDA build: an importable torch
# (in the venv, or in the interpreter that creates it) is kept as it is; otherwise
# `pip install torch==$TORCH_VERSION` (a CPU wheel on the project machines).
set -euo pipefail
venv="${1:-.venv}"
python="${PYTHON:-python3}"
torch_version="${TORCH_VERSION:-2.13.0}"

if [ ! -x "$venv/bin/python" ]; then
  if "$python" -c "import torch" 2>/dev/null; then
    echo "bootstrap: creating $venv (reusing the torch importable from $python)"
    "$python" -m venv --system-site-packages "$venv"
  else
    echo "bootstrap: creating $venv"
    "$python" -m venv "$venv"
  fi
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "bootstrap: installing torch==$torch_version"
  "${pip[@]}" install "torch==$torch_version"
fi
echo "bootstrap: installing synctalk (editable) with dev extras"
"${pip[@]}" install -e ".[dev]"
