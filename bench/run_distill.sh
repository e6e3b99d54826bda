#!/usr/bin/env bash
# Side-by-side KD training benchmark, the issue's setting: one KD step (teacher forward, student
# forward + backward, L_pred + L_attn, AdamW) of kdae distill vs a transformers + torch peer written
# the reference code's way (bench/distill_peer.py: eager attention, output_attentions=True, full-vocab
# KLDivLoss), on the real SmolLM2-135M teacher (vocab 49,152) and a student made of every 3rd of its
# layers, sequences of SEQ (1024) tokens (long answers built from the demo data), fp32, CPU.
# UNFUSED=1 also runs kdae with materialised logits (fused_lm_head: false); ATTN=0 drops the attention
# term on both sides (L_pred only, the DAE stage's objective).
# Reports tokens/s (median of steps after the first) and peak RSS of each; figures: docs/performance.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/setup.sh"
TEACHER="${TEACHER:-$KDAE_HOME/models/smollm2-135m-instruct}"
WORK="${WORK:-$KDAE_HOME/bench-distill}"
STEPS="${STEPS:-4}"
THREADS="${THREADS:-2}"
SEQ="${SEQ:-1024}"
BATCH="${BATCH:-2}"
ATTN="${ATTN:-1.0}"          # attn_weight; 0 = L_pred only (the peer then skips output_attentions too)
UNFUSED="${UNFUSED:-0}"      # 1 = also run kdae with fused_lm_head: false
ROUNDS="${ROUNDS:-2}"
mkdir -p "$WORK"
source "$KDAE_ROOT/bench/kd-bench-common.sh"
STUDENT="$WORK/student"
make_layer_student "$TEACHER" "$STUDENT" 0 3 6 9 12 15 18 21 24 27 29
# Samples longer than SEQ tokens: each answer chains several demo answers.
DATA="$WORK/long.jsonl"
"$KDAE_VENV/bin/python" - "$KDAE_ROOT/data/demo/train.jsonl" "$DATA" "$((BATCH * STEPS))" <<'PY'
import json, sys
src, out, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = [json.loads(l)["messages"] for l in open(src)]
with open(out, "w") as f:
    for i in range(count):
        answer, j = "", i
        while len(answer) < 8000:
            answer += rows[j % len(rows)][1]["content"] + "\n\n"
            j += 1
        f.write(json.dumps({"messages": [rows[i % len(rows)][0], {"role": "assistant", "content": answer}]}) + "\n")
PY
write_config() {  # $1 = fused_lm_head
  {
    cat <<YAML
base_model_path: $STUDENT
target_model_path: $TEACHER
training_data_path: $DATA
output_dir: $WORK/out
seq_length: $SEQ
train_batch_size: $BATCH
max_steps: $STEPS
lambda_param: 1.0
attn_weight: $ATTN
fused_lm_head: $1
YAML
    common_config
  } > "$WORK/run.yaml"
}
run_kdae() {  # $1 = fused_lm_head
  write_config "$1"
  rm -rf "$WORK/out"
  "$KDAE_VENV/bin/python" - "$KDAE_BUILD/kdae" "$WORK/run.yaml" "$WORK/out/metrics.jsonl" "$1" <<'PY'
import json, resource, statistics, subprocess, sys
kdae, config, metrics, fused = sys.argv[1:5]
subprocess.run([kdae, "distill", "--config", config], check=True, stderr=subprocess.DEVNULL)
rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
rates = [json.loads(l)["train/tokens_per_second"] for l in open(metrics)][1:]
print(f"kdae distill (fused_lm_head {fused}): {statistics.median(rates):.1f} tok/s (median of {len(rates)} steps), "
      f"peak RSS {rss_mb:.0f} MB")
PY
}
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round"
  run_kdae true
  [ "$UNFUSED" = 1 ] && run_kdae false
  "$KDAE_VENV/bin/python" "$KDAE_ROOT/bench/distill_peer.py" "$STUDENT" "$TEACHER" "$DATA" "$BATCH" "$STEPS" "$THREADS" "$SEQ" "$ATTN"
done
