#!/usr/bin/env bash
# Peak memory per rank of each student sharding mode, 2 Gloo ranks on CPU, for a student with the
# width of a 1B model (TinyLlama-1.1B's: hidden 2048, MLP 5632, 32 heads, 4 KV heads; SmolLM2's
# 49152-token vocabulary, tied embeddings) and LAYERS of its 22 layers, random weights, fp32, AdamW.
# Teacher: SmolLM2-135M (same tokenizer), replicated, or split ("+teacher"). Reports, per mode: the largest rank's peak RSS
# (whole run, and training alone as kdae logs it), the bytes each rank sends into collectives per step,
# the optimizer moments and gradients rank 0 holds after a step (logged by kdae), and the model
# state per rank the mode should need (weights 4P + gradients 4P + moments 8P bytes: none 16P;
# optimizer 8P + 8P/N; gradients 4P + 12P/N after the step). Figures: docs/performance.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/setup.sh"
ensure_teacher
TEACHER="${TEACHER:-$KDAE_TEACHER}"
WORK="${WORK:-$KDAE_HOME/bench-sharding}"
LAYERS="${LAYERS:-4}"
STEPS="${STEPS:-3}"
SEQ="${SEQ:-128}"
# A mode is the student's sharding, optionally "+teacher" for teacher_sharding: full as well.
MODES="${MODES:-none optimizer gradients gradients+teacher}"
mkdir -p "$WORK"
STUDENT="$WORK/student-1b-width-$LAYERS"
if [ ! -f "$STUDENT/config.json" ]; then
  "$KDAE_VENV/bin/python" - "$STUDENT" "$LAYERS" <<'PY'
import sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
out, layers = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
config = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_attention_heads=32, num_key_value_heads=4,
                     num_hidden_layers=layers, vocab_size=49152, tie_word_embeddings=True,
                     max_position_embeddings=2048, bos_token_id=1, eos_token_id=2)
LlamaForCausalLM(config).save_pretrained(out)
PY
  for f in "$TEACHER"/tokenizer* "$TEACHER"/special_tokens_map.json; do [ -f "$f" ] && cp "$f" "$STUDENT/"; done
fi
THREADS=1
source "$KDAE_ROOT/bench/kd-bench-common.sh"
for mode in $MODES; do
  student_mode="${mode%+teacher}"
  teacher_mode=replicate
  [ "$mode" != "$student_mode" ] && teacher_mode=full
  {
    cat <<YAML
base_model_path: $STUDENT
target_model_path: $TEACHER
training_data_path: $KDAE_ROOT/data/demo/train.jsonl
output_dir: $WORK/out-$mode
seq_length: $SEQ
train_batch_size: 1
max_steps: $STEPS
sharding: $student_mode
teacher_sharding: $teacher_mode
attn_weight: 0.0
hidden_weight: 0.0
YAML
    common_config
  } > "$WORK/$mode.yaml"
  rm -rf "$WORK/out-$mode"
  "$KDAE_VENV/bin/python" - "$WORK/out-$mode/metrics.jsonl" "$STUDENT" "$mode" "$KDAE_VENV/bin/torchrun" --no-python \
    --nproc-per-node 2 --master-addr 127.0.0.1 --master-port 29541 "$KDAE_BUILD/kdae" distill --config "$WORK/$mode.yaml" <<'PY'
import json, math, os, resource, subprocess, sys
from safetensors import safe_open
metrics, student, mode, cmd = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
               env=dict(os.environ, OMP_NUM_THREADS="1"))
rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
last = [json.loads(l) for l in open(metrics)][-1]
with safe_open(f"{student}/model.safetensors", "pt") as f:
    params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
n = int(last["dist/ranks"])
expect = {"none": 16 * params, "optimizer": 8 * params + 8 * params / n,
          "gradients": 4 * params + 12 * params / n}[mode.split("+")[0]]
print(f"{mode}: peak RSS {rss_gb:.2f} GiB (largest rank); rank 0 holds moments "
      f"{last['dist/optimizer_state_bytes'] / 2**30:.2f} GiB, gradients {last['dist/gradient_bytes'] / 2**30:.2f} GiB "
      f"after a step; model state per rank should be {expect / 2**30:.2f} GiB ({params / 1e6:.0f} M params, {n} ranks); "
      f"training peak (kdae's memory/peak_rss_gb) {last['memory/peak_rss_gb']:.2f} GiB; per step: gradient payload "
      f"{last['dist/allreduce_bytes_per_step'] / 2**30:.2f} GiB, parameter broadcasts {last['dist/broadcast_bytes_per_step'] / 2**30:.2f} GiB")
PY
done
