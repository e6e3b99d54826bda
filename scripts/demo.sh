#!/usr/bin/env bash
# The main job on an embedded default: installs and builds what is missing, then runs `kdae demo`.
# Extra arguments go to `kdae demo` (see `kdae demo --help`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec "$KDAE_BUILD/kdae" demo "$@"
