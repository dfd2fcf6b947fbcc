#!/usr/bin/env bash
# Fleet throughput (issue #18): one fixed small cohort (cnn, 2 arms x 3
# seeds, 1 epoch of 4096 images, 1 compute thread per run) run serially
# on this machine (`esper cohort --jobs 1`), then on the fleet with 1, 2 and
# 3 local `esper worker`s against a throwaway redis-server. Prints jobs per
# minute and the ratio to the serial run, measured in the same invocation.
#
#   scripts/fleet-throughput.sh [path/to/esper]   (default target/release/esper)
set -euo pipefail
ESPER=${1:-target/release/esper}
ESPER=$(realpath "$ESPER")
WORK=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
REDIS=$!
WORKERS=()
cleanup() {
  for w in "${WORKERS[@]:-}"; do [ -n "$w" ] && kill "$w" 2>/dev/null || true; done
  kill "$REDIS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
for _ in $(seq 50); do redis-cli -p "$PORT" PING >/dev/null 2>&1 && break; sleep 0.1; done

# Clear any ESPER_ override from the caller's shell.
for v in $(env | grep -o '^ESPER_[A-Z0-9_]*' || true); do unset "$v"; done
export FLEET_SECRET=00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff
fleet_env=(ESPER_OONA__BACKEND__KIND=redis "ESPER_OONA__BACKEND__URL=redis://127.0.0.1:$PORT/0"
  ESPER_LEYLINE__SECURITY__SECRET__SOURCE=env ESPER_LEYLINE__SECURITY__SECRET__VAR=FLEET_SECRET)

cohort() { # name -> cohort file path
  cat > "$WORK/$1.toml" <<TOML
name = "$1"
seeds = [1, 2, 3]
dir = "$WORK/runs-$1"
[config.tolaria]
host = "cnn"
epochs = 1
train_size = 4096
cpu_threads = 1
[[arm]]
kind = "static-small"
[[arm]]
kind = "heuristic"
TOML
  echo "$WORK/$1.toml"
}

now() { date +%s.%N; }
JOBS=6
t0=$(now)
(cd "$WORK" && "$ESPER" cohort "$(cohort serial)" --jobs 1 >"$WORK/serial.log" 2>&1) || true
grep -q "6 run(s) now, 0 skipped, 0 failed" "$WORK/serial.log" || { cat "$WORK/serial.log"; exit 1; }
serial=$(python3 -c "print($(now) - $t0)")
printf "serial (--jobs 1): %6.1f s  %5.1f jobs/min\n" "$serial" "$(python3 -c "print($JOBS * 60 / $serial)")"

for n in 1 2 3; do
  WORKERS=()
  for i in $(seq "$n"); do
    (cd "$WORK" && exec env "${fleet_env[@]}" "$ESPER" worker --dir "$WORK/w$n" >"$WORK/worker$n-$i.log" 2>&1) &
    WORKERS+=($!)
  done
  t0=$(now)
  (cd "$WORK" && env "${fleet_env[@]}" "$ESPER" cohort "$(cohort fleet$n)" --fleet >"$WORK/fleet$n.log" 2>&1) || true
  grep -q "6 run(s) now, 0 skipped, 0 failed" "$WORK/fleet$n.log" || { cat "$WORK/fleet$n.log"; exit 1; }
  took=$(python3 -c "print($(now) - $t0)")
  printf "fleet, %d worker(s): %6.1f s  %5.1f jobs/min  %.2fx serial\n" "$n" "$took" \
    "$(python3 -c "print($JOBS * 60 / $took)")" "$(python3 -c "print($serial / $took)")"
  for w in "${WORKERS[@]}"; do kill "$w" 2>/dev/null || true; wait "$w" 2>/dev/null || true; done
  WORKERS=()
done
echo "cores: $(nproc); esper: $ESPER"
