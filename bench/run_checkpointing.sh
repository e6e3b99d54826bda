#!/usr/bin/env bash
# Gradient checkpointing with attention KD: peak memory and step time vs depth, one process per
# configuration (peak RSS is per process). Args: DEVICE DTYPE SEQ HIDDEN HEADS (defaults: the CPU figures of
# docs/performance.md; bench/gpu-check.sh passes a 1B-like shape on cuda).
set -euo pipefail
BIN="${KDAE_BUILD:-$(dirname "${BASH_SOURCE[0]}")/../build}/bench/bench_checkpointing"
DEVICE="${1:-cpu}" DTYPE="${2:-float32}" SEQ="${3:-1024}" HIDDEN="${4:-512}" HEADS="${5:-8}"
for layers in 4 8 16; do
  for mode in none all; do "$BIN" "$layers" "$HIDDEN" "$HEADS" "$SEQ" 8192 "$mode" 2 "$DEVICE" "$DTYPE"; done
done
"$BIN" 16 "$HIDDEN" "$HEADS" "$SEQ" 8192 every2 2 "$DEVICE" "$DTYPE"
