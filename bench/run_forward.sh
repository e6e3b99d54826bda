#!/usr/bin/env bash
# Side-by-side forward benchmark on the SmolLM2-135M teacher (converted by scripts/demo.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/setup.sh"
MODEL="${1:-$KDAE_HOME/models/smollm2-135m-instruct}"
for round in 1 2 3; do
  "$KDAE_BUILD/bench/bench_forward" "$MODEL" 4 256 5 2
  "$KDAE_VENV/bin/python" "$KDAE_ROOT/bench/forward_peer.py" "$MODEL" 4 256 5 2
done
