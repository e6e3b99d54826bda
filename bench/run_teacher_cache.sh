#!/usr/bin/env bash
# Epoch time and peak memory of KD training from a teacher cache vs the online teacher (issue 7):
# the SmolLM2-135M teacher (30 layers, 135M parameters) against a student made of its layers
# STUDENT_LAYERS (default "0 29": 2 layers, 35M parameters, so the teacher is 3.9x the student; the
# tied 28M embedding dominates such small students), the first SAMPLES demo samples, batch 8, forward
# KL, fp32, CPU, THREADS threads. Runs, each a separate process (wall time and peak RSS of each):
#   capture   kdae teacher-cache over the data (the one-time teacher pass, top-k 64)
#   online    one epoch of kdae distill with the live teacher
#   cache     one epoch of kdae distill with teacher_cache
#   student   one epoch of CE-only training (lambda 0, no teacher loaded): the student-only floor
# "wall" includes process start, model loading and tokenization; "epoch loop" is the training steps.
# Figures: docs/performance.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/setup.sh"
TEACHER="${TEACHER:-$KDAE_HOME/models/smollm2-135m-instruct}"
WORK="${WORK:-$KDAE_HOME/bench-teacher-cache}"
SAMPLES="${SAMPLES:-64}"
THREADS="${THREADS:-2}"
ROUNDS="${ROUNDS:-2}"
STUDENT_LAYERS="${STUDENT_LAYERS:-0 29}"
mkdir -p "$WORK"
source "$KDAE_ROOT/bench/kd-bench-common.sh"
STUDENT="$WORK/student-${STUDENT_LAYERS// /-}"
make_layer_student "$TEACHER" "$STUDENT" $STUDENT_LAYERS
head -n "$SAMPLES" "$KDAE_ROOT/data/demo/train.jsonl" > "$WORK/train.jsonl"
config() {  # $1 = file, then extra YAML lines
  local file="$1"; shift
  {
    cat <<YAML
base_model_path: $STUDENT
target_model_path: $TEACHER
training_data_path: $WORK/train.jsonl
output_dir: $WORK/out
seq_length: 256
train_batch_size: 8
num_train_epochs: 1
lambda_param: 1.0
attn_weight: 0.0
YAML
    common_config
    printf '%s\n' "$@"
  } > "$file"
}
config "$WORK/online.yaml"
config "$WORK/cache.yaml" "teacher_cache: $WORK/cache"
sed -i '/^target_model_path/d' "$WORK/cache.yaml"
config "$WORK/student.yaml" "teacher_cache: $WORK/cache" "lambda_param: 0.0"
sed -i '/^target_model_path/d; 0,/^lambda_param: 1.0$/{/^lambda_param: 1.0$/d}' "$WORK/student.yaml"

measure() {  # $1 = label, then the kdae arguments
  local label="$1"; shift
  "$KDAE_VENV/bin/python" - "$label" "$KDAE_BUILD/kdae" "$@" <<'PY'
import resource, subprocess, sys, time
label, cmd = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
proc = subprocess.run(cmd, capture_output=True, text=True)
wall = time.perf_counter() - start
if proc.returncode != 0:
    sys.exit(f"{label} failed:\n{proc.stderr[-2000:]}")
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
extra = ""
if cmd[1] == "distill":  # the training loop alone: the sum of the logged step times (logging_steps 1)
    import json, pathlib
    config = dict(l.split(": ", 1) for l in pathlib.Path(cmd[3]).read_text().splitlines() if ": " in l)
    lines = (pathlib.Path(config["output_dir"].strip()) / "metrics.jsonl").read_text().splitlines()
    extra = f"  | epoch loop {sum(json.loads(l)['train/step_seconds'] for l in lines):6.1f} s"
for line in proc.stdout.splitlines() + proc.stderr.splitlines():
    if "bytes/token" in line or "bytes per" in line:
        extra = "  | " + line.strip()
print(f"{label:8s} wall {wall:7.1f} s   peak RSS {rss:6.0f} MB{extra}", flush=True)
PY
}
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round"
  rm -rf "$WORK/cache"
  measure capture teacher-cache --config "$WORK/online.yaml" --teacher "$TEACHER" --top-k 64 --out "$WORK/cache"
  measure online distill --config "$WORK/online.yaml"
  measure cache distill --config "$WORK/cache.yaml"
  measure student distill --config "$WORK/student.yaml"
done
du -sh "$WORK/cache"
