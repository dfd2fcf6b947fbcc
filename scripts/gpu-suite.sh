#!/usr/bin/env bash
# The GPU suite (issue #22 part 3), built on a machine without a GPU and run
# on one that has it.
#
#   bash scripts/gpu-suite.sh build   # here: CUDA toolkit from PyPI, release
#                                     # test executables + esper, stripped,
#                                     # into target/gpu-suite/
#   bash scripts/gpu-suite.sh run     # there, from the repository root (with
#                                     # target/gpu-suite carried): every
#                                     # `gpu_…` test, log in $OUT (or
#                                     # target/gpu-suite/out)
#
# `run` exits non-zero when any test fails; the log names each.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
suite="$root/target/gpu-suite"
# (crate, test target) pairs holding `gpu_…` tests.
tests=("esper-ops gpu" "tolaria gpu" "esper-runtime esper_runtime")

case "${1:-}" in
build)
  home="$root/target/cuda-home"
  [ -x "$home/bin/nvcc" ] || bash "$root/scripts/setup-cuda-home.sh" "$home"
  export CUDA_HOME="$home" PATH="$home/bin:$PATH" CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
  export CARGO_TARGET_DIR="$root/target/cuda"
  cd "$root"
  rm -rf "$suite"
  mkdir -p "$suite"
  cargo build --release -p esper-runtime --features cuda --bin esper
  cp "$CARGO_TARGET_DIR/release/esper" "$suite/esper"
  for pair in "${tests[@]}"; do
    read -r crate target <<<"$pair"
    exe=$(cargo test --release -p "$crate" --features cuda --test "$target" --no-run \
      --message-format=json |
      grep -o '"executable":"[^"]*"' | tail -n 1 | sed 's/"executable":"\(.*\)"/\1/')
    [ -x "$exe" ] || { echo "gpu-suite: no test executable for $crate --test $target" >&2; exit 1; }
    cp "$exe" "$suite/$crate-$target"
  done
  strip "$suite"/*
  du -sh "$suite"/*
  echo "gpu-suite: built in $suite (carry target/gpu-suite; run: bash scripts/gpu-suite.sh run)"
  ;;
run)
  out="${OUT:-$suite/out}"
  mkdir -p "$out"
  cd "$root"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
  export GPU_SUITE_ESPER="$suite/esper"
  status=0
  for pair in "${tests[@]}"; do
    read -r crate target <<<"$pair"
    echo "== $crate --test $target" | tee -a "$out/gpu-suite.log"
    "$suite/$crate-$target" --ignored gpu --nocapture --test-threads 1 2>&1 |
      tee -a "$out/gpu-suite.log" || status=1
  done
  grep -E "^test .*(ok|FAILED)$|^test result" "$out/gpu-suite.log" || true
  exit "$status"
  ;;
*)
  echo "usage: bash scripts/gpu-suite.sh build|run" >&2
  exit 2
  ;;
esac
