# Shared by bench/run_distill.sh and bench/run_teacher_cache.sh (sourced after scripts/setup.sh).

# make_layer_student TEACHER OUT LAYER...: a student made of the listed teacher layers (embeddings, final
# norm and head kept), saved through transformers with the teacher's own tokenizer files.
make_layer_student() {
  local teacher="$1" out="$2"
  shift 2
  [ -f "$out/config.json" ] && return 0
  "$KDAE_VENV/bin/python" - "$teacher" "$out" "$@" <<'PY'
import sys, torch
from transformers import AutoModelForCausalLM
teacher, out = sys.argv[1:3]
keep = [int(x) for x in sys.argv[3:]]
m = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32)
m.model.layers = torch.nn.ModuleList([m.model.layers[i] for i in keep])
m.config.num_hidden_layers = len(keep)
m.save_pretrained(out)
PY
  # A re-save through transformers may rewrite the tokenizer files; keep the teacher's.
  local f
  for f in "$teacher"/tokenizer* "$teacher"/special_tokens_map.json "$teacher"/generation_config.json; do
    [ -f "$f" ] && cp "$f" "$out/"
  done
  return 0
}

# The run-config lines every KD benchmark shares: CPU, fp32, log every step, no checkpoints.
common_config() {
  cat <<YAML
overwrite: true
learning_rate: 1.0e-4
logging_steps: 1
save_steps: 0
save_fraction_of_epoch: 0
device: cpu
teacher_device: cpu
teacher_dtype: float32
threads: $THREADS
data_cache_dir: none
YAML
}
