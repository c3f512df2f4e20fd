#!/usr/bin/env bash
# Install llama-cpp-python's OpenAI-compatible server into .venv, built for this CPU
# (llm.backend: local). Idempotent: nothing happens when the pinned version is installed.
#
# llama-cpp-python ships only source; pip builds llama.cpp with CMake (about 6 minutes on
# 2 cores). Its default build (GGML_NATIVE=ON) compiles for every instruction the build CPU
# has, and on a Xeon with AMX that build crashes (general protection fault in libggml-cpu)
# on any prompt longer than one token. So the build is portable: GGML_NATIVE=OFF with the
# x86 extensions chosen from /proc/cpuinfo (AVX, AVX2, FMA, F16C where present), which runs
# on both CPU kinds this project sees (AMD EPYC with AVX2, Intel Xeon with AVX512/AMX).
#
# The wheel is kept under ~/.cache/tag-pipeline/llama-wheels/<flags>/ (pip's own wheel cache
# does not tell builds with different CMAKE_ARGS apart), so a second install, in any clone on
# this machine, takes seconds.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$PROJECT_DIR"
VERSION=0.3.36
if "$VENV/bin/python" - "$VERSION" <<'EOF' 2>/dev/null
import importlib.metadata, importlib.util, sys
ok = importlib.metadata.version("llama-cpp-python") == sys.argv[1]
ok = ok and all(importlib.util.find_spec(m) for m in ("uvicorn", "sse_starlette", "starlette_context"))
sys.exit(0 if ok else 1)
EOF
then
  echo "[setup-llama] llama-cpp-python $VERSION is installed"
  exit 0
fi
flags=(-DGGML_NATIVE=OFF)
name="portable"
if [ "$(uname -m)" = x86_64 ]; then
  cpu_flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
  for f in avx avx2 fma f16c; do
    up="$(echo "$f" | tr a-z A-Z)"
    if [[ "$cpu_flags" == *" $f "* ]]; then flags+=("-DGGML_$up=ON"); name+="-$f"; else flags+=("-DGGML_$up=OFF"); fi
  done
  # AVX-512 and AMX kernels stay off: the native build that enables them crashed (see above).
  flags+=(-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
fi
wheels="${TAG_LLAMA_WHEELS:-$HOME/.cache/tag-pipeline/llama-wheels}/$VERSION-$name"
wheel="$(ls "$wheels"/llama_cpp_python-*.whl 2>/dev/null | head -1 || true)"
if [ -z "$wheel" ]; then
  echo "[setup-llama] building llama-cpp-python $VERSION with ${flags[*]} (about 6 minutes on 2 cores)"
  mkdir -p "$wheels"
  start=$(date +%s)
  CMAKE_ARGS="${flags[*]}" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$VENV/bin/python" -m pip wheel -q --no-deps --no-cache-dir -w "$wheels" "llama-cpp-python==$VERSION"
  echo "[setup-llama] built in $(( $(date +%s) - start )) s: $(ls "$wheels")"
  wheel="$(ls "$wheels"/llama_cpp_python-*.whl | head -1)"
fi
"$VENV/bin/python" -m pip install -q -c constraints.txt "${wheel}[server]"
echo "[setup-llama] installed $(basename "$wheel")"
