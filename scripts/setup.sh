#!/usr/bin/env bash
# One-step set-up on a fresh machine: venv, CPU torch, a portable llama.cpp build, the project and its extras.
# Idempotent: a second run takes seconds. Usage: scripts/setup.sh [dev|browser]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
WHEELS=${DISTILL_WHEEL_CACHE:-$HOME/.cache/distill-wheels}
LLAMA_VERSION=0.3.36
# Portable CPU flags: a -march=native build can emit instructions (AMX, AVX-512 variants) that a VM reports
# but traps on ("invalid opcode"); AVX2 runs everywhere this project targets.
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip

# torch first: 2.13.0 is the CPU build on this machine's disk; anything else would pull a multi-GB CUDA build.
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"

# llama-cpp-python compiles from source (~6-10 min on 2 cores); the wheel is cached per flag set.
flags_id=$(printf '%s' "$LLAMA_VERSION $LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-12)
llama_dir="$WHEELS/llama-$flags_id"
if ! python -c "import llama_cpp, sys; sys.exit(0 if llama_cpp.__version__ == '$LLAMA_VERSION' else 1)" 2>/dev/null \
   || [ ! -f "$VENV/.llama-$flags_id" ]; then
  if ! ls "$llama_dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python $LLAMA_VERSION (portable CPU flags; several minutes, once per machine)"
    mkdir -p "$llama_dir"
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" FORCE_CMAKE=1 python -m pip wheel -q --no-deps --no-cache-dir \
      -w "$llama_dir" "llama-cpp-python==$LLAMA_VERSION"
  fi
  whl=$(ls "$llama_dir"/llama_cpp_python-*.whl | head -1)
  python -m pip install -q --force-reinstall --no-deps "$whl"
  python -m pip install -q "${whl}[server]"
  touch "$VENV/.llama-$flags_id"
fi

# scaleout: validates the Kubernetes/Postgres profile against its schemas in tests; awq: llm-compressor, so that
# awq_export runs on CPU (it pins transformers to 5.15-5.17)
extras="dev,scaleout,awq"
python -m pip install -q -e ".[${extras}]"

# Debian packages: bubblewrap isolates teacher-written code under verification
apt_install() {
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  fi
}
command -v bwrap >/dev/null || apt_install bubblewrap
# the PostgreSQL server: the DuckLake store's catalog; tests start a throwaway one (tests/fakes/postgres_server.py)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_install postgresql

if [ "${1:-}" = "browser" ]; then
  # Debian's Chromium for the UI test (Playwright's own browser download does not work offline)
  [ -x /usr/bin/chromium ] || apt_install chromium
fi
python -c "import torch, llama_cpp, dagster, distill_assets; print('distill ready: torch', torch.__version__, '| llama_cpp', llama_cpp.__version__, '| dagster', dagster.__version__)"
