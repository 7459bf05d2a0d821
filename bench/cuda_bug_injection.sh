#!/usr/bin/env bash
# Does the emulated CUDA suite catch real kernel bugs? Injects one bug at a time into a copy of the CUDA
# sources (a missing __syncthreads, an off-by-one tile bound, a wrong reduction step, a shuffle after an
# early exit), rebuilds the emulated module, runs that kernel family's emulated parity tests in both
# schedules, and prints how many fail in each. Needs an IMM_EXT_CUDA_EMULATION=ON install of this tree;
# the installed emulated module is swapped for the broken one while its tests run, then put back.
#
#   bench/cuda_bug_injection.sh            (about ten minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=$(mktemp -d)
installed=$(python -c "import imm_ext._core as c; print(c._C_emu.__file__)")
cp "$installed" "$work/original.so"
trap 'cp "$work/original.so" "$installed"; git worktree remove --force "$work/src" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

git worktree add -q --detach "$work/src" HEAD
cmake -S "$work/src" -B "$work/build" -G Ninja -DIMM_EXT_CUDA=OFF -DIMM_EXT_CUDA_EMULATION=ON \
  -Dpybind11_DIR="$(python -c 'import pybind11; print(pybind11.get_cmake_dir())')" \
  -DPython_EXECUTABLE="$(command -v python)" >/dev/null

inject() {  # name, file, sed expression, pytest -k expression
  local name=$1 file=$2 expression=$3 tests=$4
  git -C "$work/src" checkout -q -- csrc
  sed -i "$expression" "$work/src/$file"
  git -C "$work/src" diff --quiet && { echo "$name: the injection did not apply"; return 1; }
  ninja -C "$work/build" _C_emu >"$work/$name.build" 2>&1 || { echo "$name: build failed"; return 1; }
  cp "$work"/build/_C_emu*.so "$installed"
  (cd "$root" && python -m pytest tests/test_cuda.py -q -k "$tests and emulated" >"$work/$name.log" 2>&1) || true
  for order in forward reverse; do
    local total failed
    total=$(cd "$root" && python -m pytest tests/test_cuda.py -q --collect-only -k "$tests and emulated-$order" |
            grep -c "::" || true)
    failed=$(grep "^FAILED" "$work/$name.log" | grep -c "emulated-$order" || true)
    echo "$name: emulated-$order: $failed of $total tests fail"
  done
  grep -m1 -E "emulated kernel|Mismatched" "$work/$name.log" | cut -c1-200 || true
}

inject missing-barrier csrc/cuda/attention_cuda.cu \
  '0,/__syncthreads();  \/\/ the previous tile is consumed/s//\/\/ (barrier removed)/' attention
inject off-by-one-tile csrc/cuda/attention_cuda.cu '0,/shape.kv_len - j0))/s//shape.kv_len - j0 + 1))/' attention
inject wrong-reduction-step csrc/cuda/norm_cuda.cu \
  's/offset = kWarp \/ 2; offset > 0;/offset = kWarp \/ 2; offset > 1;/' norm_modulate
inject shuffle-after-exit csrc/cuda/norm_cuda.cu \
  '0,/const int lane = threadIdx.x % kWarp;/s//const int lane = threadIdx.x % kWarp;\n  if (lane >= shape.channels) return;/' \
  norm_modulate
