#!/usr/bin/env bash
# The whole test suite: installs and builds what is missing, then runs every test (C++ and the
# Python oracle tests) through ctest. Extra arguments go to ctest (e.g. -R tokenizer).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
ensure_teacher  # test_chat.py talks to the real teacher
cd "$KDAE_BUILD"
ctest --output-on-failure -j "${KDAE_TEST_JOBS:-2}" -LE slow "$@"
