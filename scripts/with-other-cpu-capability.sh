#!/usr/bin/env bash
# Runs a command under the CPU kernel set LibTorch would not pick on this machine (ATEN_CPU_CAPABILITY), so
# a float32 tolerance that holds for one set of vector kernels only fails here rather than on a user's CPU:
# avx2 on an AVX-512 machine, the scalar kernels ("default") elsewhere. docs/developing.md has the rule.
set -euo pipefail
if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
  capability=avx2
else
  capability=default
fi
echo "ATEN_CPU_CAPABILITY=$capability $*" >&2
ATEN_CPU_CAPABILITY=$capability exec "$@"
