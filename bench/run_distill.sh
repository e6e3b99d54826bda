#!/usr/bin/env bash
# Side-by-side KD training benchmark: kdae distill vs a transformers + torch peer (bench/distill_peer.py)
# on the real SmolLM2-135M teacher and a student made of every 3rd of its layers (made by `kdae demo`,
# or by this script through a 0-step demo run), the demo's data, batch 8, forward KL, fp32, CPU.
# Reports tokens/s (median of steps after the first) and peak RSS of each; figures: docs/performance.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/setup.sh"
TEACHER="${TEACHER:-$KDAE_HOME/models/smollm2-135m-instruct}"
WORK="${WORK:-$KDAE_HOME/bench-distill}"
STEPS="${STEPS:-8}"
THREADS="${THREADS:-2}"
mkdir -p "$WORK"
STUDENT="$WORK/student"
if [ ! -f "$STUDENT/config.json" ]; then
  "$KDAE_VENV/bin/python" - "$TEACHER" "$STUDENT" <<'PY'
import sys, torch
from transformers import AutoModelForCausalLM
teacher, out = sys.argv[1:3]
m = AutoModelForCausalLM.from_pretrained(teacher, torch_dtype=torch.float32)
keep = list(range(0, m.config.num_hidden_layers, 3))
keep = keep if keep[-1] == m.config.num_hidden_layers - 1 else keep + [m.config.num_hidden_layers - 1]
m.model.layers = torch.nn.ModuleList([m.model.layers[i] for i in keep])
m.config.num_hidden_layers = len(keep)
m.save_pretrained(out)
PY
  # The teacher's own tokenizer files (a re-save through transformers may rewrite them).
  for f in "$TEACHER"/tokenizer* "$TEACHER"/special_tokens_map.json "$TEACHER"/generation_config.json; do
    [ -f "$f" ] && cp "$f" "$STUDENT/"
  done
fi
cat > "$WORK/run.yaml" <<YAML
base_model_path: $STUDENT
target_model_path: $TEACHER
training_data_path: $KDAE_ROOT/data/demo/train.jsonl
output_dir: $WORK/out
overwrite: true
seq_length: 256
train_batch_size: 8
max_steps: $STEPS
learning_rate: 1.0e-4
lambda_param: 1.0
attn_weight: 0.0
logging_steps: 1
save_steps: 0
save_fraction_of_epoch: 0
device: cpu
teacher_device: cpu
teacher_dtype: float32
threads: $THREADS
data_cache_dir: none
YAML
for round in 1 2; do
  rm -rf "$WORK/out"
  "$KDAE_VENV/bin/python" - "$KDAE_BUILD/kdae" "$WORK/run.yaml" "$WORK/out/metrics.jsonl" <<'PY'
import json, resource, statistics, subprocess, sys
kdae, config, metrics = sys.argv[1:4]
subprocess.run([kdae, "distill", "--config", config], check=True, stderr=subprocess.DEVNULL)
rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
rates = [json.loads(l)["train/tokens_per_second"] for l in open(metrics)][1:]
print(f"kdae distill: {statistics.median(rates):.1f} tok/s (median of {len(rates)} steps), peak RSS {rss_mb:.0f} MB")
PY
  "$KDAE_VENV/bin/python" "$KDAE_ROOT/bench/distill_peer.py" "$STUDENT" "$TEACHER" "$KDAE_ROOT/data/demo/train.jsonl" 8 "$STEPS" "$THREADS"
done
