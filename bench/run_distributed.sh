#!/usr/bin/env bash
# Data-parallel training on CPU: the same KD job (SmolLM2-135M teacher, an 11-layer student cut from
# it, SEQ-token samples, fp32) as one process with 2 threads and a global batch of 2 x BATCH, and as
# two torchrun ranks of 1 thread with BATCH each (Gloo over loopback). Reports tokens/s of the job
# (median of steps after the first), peak RSS of the largest process, and the gradient bytes each
# rank sends into the all-reduce per optimizer step against the parameter bytes (a ring all-reduce
# moves 2 (N-1)/N of them per rank). Figures: docs/performance.md (Distributed training).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/setup.sh"
TEACHER="${TEACHER:-$KDAE_HOME/models/smollm2-135m-instruct}"
WORK="${WORK:-$KDAE_HOME/bench-distributed}"
STEPS="${STEPS:-6}"
SEQ="${SEQ:-256}"
BATCH="${BATCH:-4}"
ROUNDS="${ROUNDS:-2}"
THREADS=1
mkdir -p "$WORK"
source "$KDAE_ROOT/bench/kd-bench-common.sh"
STUDENT="$WORK/student"
make_layer_student "$TEACHER" "$STUDENT" 0 3 6 9 12 15 18 21 24 27 29
write_run_config() {  # $1 = name, $2 = train_batch_size, $3 = threads
  {
    cat <<YAML
base_model_path: $STUDENT
target_model_path: $TEACHER
training_data_path: $KDAE_ROOT/data/demo/train.jsonl
output_dir: $WORK/out-$1
seq_length: $SEQ
train_batch_size: $2
max_steps: $STEPS
lambda_param: 1.0
attn_weight: 0.0
YAML
    THREADS=$3 common_config
  } > "$WORK/$1.yaml"
}
write_run_config one $((2 * BATCH)) 2
write_run_config two "$BATCH" 1
measure() {  # $1 = run (one | two), $2 = label, then the command
  local run="$1" label="$2"
  shift 2
  rm -rf "$WORK/out-$run"
  "$KDAE_VENV/bin/python" - "$WORK/out-$run/metrics.jsonl" "$STUDENT" "$label" "$@" <<'PY'
import json, math, resource, statistics, subprocess, sys
from safetensors import safe_open
metrics, student, name, cmd = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
lines = [json.loads(l) for l in open(metrics)]
rate = statistics.median(l["train/tokens_per_second"] for l in lines[1:])
line = f"{name}: {rate:.0f} tok/s (median of {len(lines) - 1} steps), peak RSS {rss_mb:.0f} MB"
if "dist/allreduce_bytes_per_step" in lines[-1]:
    with safe_open(f"{student}/model.safetensors", "pt") as f:
        params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    sent = lines[-1]["dist/allreduce_bytes_per_step"]
    ranks = int(lines[-1]["dist/ranks"])
    line += (f"; all-reduce payload {sent / 2**20:.1f} MiB/step = {sent / (4 * params):.3f} x fp32 params "
             f"({params / 1e6:.1f} M); ring traffic per rank {2 * (ranks - 1) / ranks * sent / 2**20:.1f} MiB/step")
print(line)
PY
}
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round"
  measure one "1 process x 2 threads, batch $((2 * BATCH))" "$KDAE_BUILD/kdae" distill --config "$WORK/one.yaml"
  measure two "2 ranks x 1 thread, batch $BATCH each" env OMP_NUM_THREADS=1 "$KDAE_VENV/bin/torchrun" --no-python \
    --nproc-per-node 2 --master-addr 127.0.0.1 --master-port 29533 "$KDAE_BUILD/kdae" distill --config "$WORK/two.yaml"
done
