#!/usr/bin/env bash
# The GPU suite (issue #22 part 3), built on a machine without a GPU and run
# on one that has it.
#
#   bash scripts/gpu-suite.sh build   # here: CUDA toolkit from PyPI, release
#                                     # test executables + esper, stripped,
#                                     # into target/gpu-suite/
#   bash scripts/gpu-suite.sh run     # there, from the repository root (with
#                                     # target/gpu-suite carried): every
#                                     # `gpu_…` test, then the step bench
#                                     # (candle-CUDA vs PyTorch-CUDA, GPU vs
#                                     # CPU) and the control fence's share of
#                                     # a GPU run; logs in $OUT (or
#                                     # target/gpu-suite/out)
#
# `run` exits non-zero when any test fails; the log names each. The CUDA 13
# runtime libraries are taken from the machine's PyTorch when they are not on
# LD_LIBRARY_PATH already. Executables travel stripped and xz-compressed
# (about 10 MB each: the carry limit is 64 MiB).
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
  # One cargo invocation for every executable: one feature resolution, so
  # candle's CUDA kernels are compiled by nvcc once.
  cargo test --release --features cuda -p esper-ops -p tolaria -p esper-runtime \
    --tests --benches --no-run --message-format=json >"$suite/build.json"
  cargo build --release --features cuda -p esper-runtime --bin esper
  cp "$CARGO_TARGET_DIR/release/esper" "$suite/esper"
  python3 - "$suite" <<'PY'
import json, shutil, sys
suite = sys.argv[1]
# (package, target) -> the name the run step expects
wanted = {("esper-ops", "gpu"): "esper-ops-gpu", ("tolaria", "gpu"): "tolaria-gpu",
          ("esper-runtime", "esper_runtime"): "esper-runtime-esper_runtime",
          ("tolaria", "gpu_step"): "tolaria-gpu_step"}
found = {}
for line in open(f"{suite}/build.json"):
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    package = m["package_id"].split("#")[0].rsplit("/", 1)[-1].split("@")[0]
    key = (package, m["target"]["name"])
    if key in wanted:
        found[key] = m["executable"]
missing = [f"{p} {t}" for (p, t) in wanted if (p, t) not in found]
if missing:
    sys.exit(f"gpu-suite: no executable for {', '.join(missing)}")
for key, exe in found.items():
    shutil.copy(exe, f"{suite}/{wanted[key]}")
PY
  rm "$suite/build.json"
  strip "$suite"/*
  xz -9 -T0 "$suite"/*
  du -sh "$suite"/*
  echo "gpu-suite: built in $suite (carry target/gpu-suite; run: bash scripts/gpu-suite.sh run)"
  ;;
run)
  out="${OUT:-$suite/out}"
  mkdir -p "$out"
  cd "$root"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
  bin=$(mktemp -d)
  for f in "$suite"/*.xz; do
    name=$(basename "$f" .xz)
    xz -dc "$f" >"$bin/$name" 2>/dev/null ||
      python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$f" "$bin/$name"
    chmod +x "$bin/$name"
  done
  if ! ldconfig -p | grep -q libcublas.so.13; then
    libs=$(python3 -c 'import glob, os, torch; print(":".join(sorted(glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "*", "lib")))))' || true)
    export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
  export GPU_SUITE_ESPER="$bin/esper"
  status=0
  for pair in "${tests[@]}"; do
    read -r crate target <<<"$pair"
    echo "== $crate --test $target" | tee -a "$out/gpu-suite.log"
    "$bin/$crate-$target" --ignored gpu --nocapture --test-threads 1 2>&1 |
      tee -a "$out/gpu-suite.log" || status=1
  done
  grep -E "^test .*(ok|FAILED)$|^test result" "$out/gpu-suite.log" || true
  echo "== step bench" | tee "$out/gpu-step.log"
  "$bin/tolaria-gpu_step" --bench 2>&1 | tee -a "$out/gpu-step.log" || status=1
  # The control fence's share of a GPU run: the fence costs the same
  # milliseconds while the step shrinks (issue #22 part 4).
  run=$(mktemp -d)
  (cd "$run" && ESPER_TOLARIA__DEVICE=cuda ESPER_TOLARIA__HOST=cnn ESPER_TOLARIA__EPOCHS=3 \
    ESPER_TOLARIA__DATA_DIR="$root/data/mnist" ESPER_RUN__RUN_ID=fence \
    "$bin/esper" train) >"$out/fence-run.log" 2>&1 || status=1
  python3 - "$run/runs/fence/metrics.jsonl" <<'PY' | tee "$out/fence-share.txt" || status=1
import json, sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    share = e["fence_ms"] / (1e3 * e["seconds"]) if e["seconds"] else float("nan")
    print(f'epoch {e["epoch"]}: step p50 {e["step_ms_p50"]:.3f} ms, {e["fences"]} fence(s) '
          f'{e["fence_ms"]:.2f} ms in {e["seconds"]:.2f} s: fence share {100 * share:.2f} %')
PY
  exit "$status"
  ;;
*)
  echo "usage: bash scripts/gpu-suite.sh build|run" >&2
  exit 2
  ;;
esac
