#!/usr/bin/env bash
# Regenerates the bundled demo instruction set (data/demo/README.md): the teacher, SmolLM2-135M-Instruct
# (converted by scripts/demo.sh), answers data/demo/instructions.jsonl greedily with `kdae generate` in
# batch mode; the first 264 answered instructions become train.jsonl, the last 40 heldout.jsonl.
# Usage: scripts/make-demo-data.sh [extra kdae generate flags, e.g. --threads 2]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KDAE="${KDAE_BIN:-$ROOT/build/kdae}"
TEACHER="${KDAE_TEACHER:-${KDAE_HOME:-$HOME/.cache/kdae}/models/smollm2-135m-instruct}"
DATA="$ROOT/data/demo"
TRAIN_COUNT=264
[ -f "$TEACHER/config.json" ] || { echo "no teacher at $TEACHER: run scripts/demo.sh once" >&2; exit 1; }
answers="$(mktemp)"
trap 'rm -f "$answers"' EXIT
"$KDAE" generate --model "$TEACHER" --input "$DATA/instructions.jsonl" --output "$answers" \
  --chat --template smollm2 --max-new-tokens 96 --temperature 0 "$@"
# {"prompt", "response"} -> a two-turn conversation, the format kdae distill reads.
to_messages='{messages: [{role: "user", content: .prompt}, {role: "assistant", content: .response}]}'
head -n "$TRAIN_COUNT" "$answers" | jq -c "$to_messages" > "$DATA/train.jsonl.tmp"
tail -n +"$((TRAIN_COUNT + 1))" "$answers" | jq -c "$to_messages" > "$DATA/heldout.jsonl.tmp"
mv "$DATA/train.jsonl.tmp" "$DATA/train.jsonl"
mv "$DATA/heldout.jsonl.tmp" "$DATA/heldout.jsonl"
echo "wrote $(wc -l < "$DATA/train.jsonl") train and $(wc -l < "$DATA/heldout.jsonl") held-out conversations to $DATA"
