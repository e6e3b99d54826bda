#!/usr/bin/env bash
# The device check in one run (the `device` tool's machine: CUDA, cmake, ninja, PyTorch in /opt/torch/.venv,
# no internet): prints the toolchain, builds kdae against that venv's LibTorch, runs every C++ test (the
# CUDA ones skip without a device and run here), then the numeric suites under the other CPU capability.
# Extend it with each GPU test and benchmark as they land; keep it one command that fits a few minutes.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${KDAE_VENV:-/opt/torch/.venv}"
BUILD="${KDAE_BUILD:-build-gpu}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
g++ --version | head -1; cmake --version | head -1; command -v nvcc >/dev/null && nvcc --version | tail -1
"$VENV/bin/python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())'
if [ ! -f "$BUILD/build.ninja" ]; then
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKDAE_PYTHON="$VENV/bin/python" || exit 1
fi
# -k 0: a benchmark that fails to build must not keep the tests from running.
time cmake --build "$BUILD" -j "$(nproc)" -- -k 0 || echo "== build had failures; running what was built"
status=0
for t in "$BUILD"/tests/kdae_*_tests; do
  echo "== $t"
  "$t" --gtest_brief=1 || status=1
done
# Gradient checkpointing with attention KD on a 1B-like shape (hidden 2048, 16 layers, seq 2048), bf16.
if [ -x "$BUILD/bench/bench_checkpointing" ]; then
  echo "== bench_checkpointing (cuda, bfloat16)"
  KDAE_BUILD="$BUILD" timeout 240 bash bench/run_checkpointing.sh cuda bfloat16 2048 2048 16 || status=1
fi
# Serving throughput, kdae serve vs transformers' batched generate, 1/4/16 clients (random 135M-shaped model).
if [ -x "$BUILD/kdae" ] && "$VENV/bin/python" -c 'import transformers' 2>/dev/null; then
  echo "== serve_throughput (cuda, bfloat16)"
  KDAE_BIN="$BUILD/kdae" timeout 240 "$VENV/bin/python" bench/serve_throughput.py --device cuda --dtype bfloat16 \
    --rounds 3 --tokens 128 || status=1
fi
# Data parallel on NCCL: one torchrun rank (every collective runs; NCCL refuses two ranks on one GPU).
if [ -x "$BUILD/kdae" ] && [ -x "$VENV/bin/torchrun" ] && "$VENV/bin/python" -c 'import transformers' 2>/dev/null; then
  echo "== distributed_check (cuda, nccl)"
  KDAE_BIN="$BUILD/kdae" timeout 120 "$VENV/bin/python" bench/distributed_check.py --ranks 1 || status=1
  KDAE_BIN="$BUILD/kdae" timeout 120 "$VENV/bin/python" bench/distributed_check.py --ranks 1 --sharding gradients --teacher-sharding full || status=1
fi
exit $status
