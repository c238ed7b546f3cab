#!/usr/bin/env bash
# Three hospital nodes as separate processes on this machine (loopback, mutual TLS):
# synthetic sites -> provisioned bundles -> 3 x `hospital-node run` -> wait for swaps ->
# `hospital-node status` for each -> SIGTERM -> final status. Bounded in time (DEMO_TIMEOUT).
# The nodes share their per-finding AUC summaries ([metrics] share, DEMO_SHARE=false to keep
# them home); with DEMO_STEPS=N they train N steps and stop by themselves (a longer run for
# the clinician app: ecl-app --results $DEMO_DIR/N1/state/results.sqlite).
#
#   scripts/network_demo.sh            (what `make network-demo` runs)
#   DEMO_DIR=/tmp/demo DEMO_TIMEOUT=300 scripts/network_demo.sh
#   DEMO_STEPS=1000 DEMO_PER_SITE=400 DEMO_TIMEOUT=1800 scripts/network_demo.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${BIN:-$ROOT/.venv/bin}"
DIR="${DEMO_DIR:-$ROOT/build/network-demo}"
NETWORK="${DEMO_NETWORK:-$ROOT/examples/local-3-nodes/network.toml}"
TIMEOUT="${DEMO_TIMEOUT:-240}"   # seconds for the whole wait-for-swaps (or DEMO_STEPS) phase
STEPS="${DEMO_STEPS:-}"          # empty: stop once every node swapped; N: train N steps
PER_SITE="${DEMO_PER_SITE:-40}"  # images per hospital (20 % of its patients in its test split)
SHARE="${DEMO_SHARE:-true}"      # [metrics] share: publish per-finding AUC summaries
read -r -a RUN_ARGS <<<"${DEMO_RUN_ARGS:-}"  # more `hospital-node run` flags, e.g. "--dp exchange ..."
NAMES=(N1 N2 N3)
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

PIDS=()
cleanup() {
  # Stop only the processes this script started: SIGTERM, then SIGKILL after 20 s.
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 40); do
    alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0
    sleep 0.5
  done
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

echo "== 1. synthetic sites in $DIR/data"
rm -rf "$DIR"
mkdir -p "$DIR/logs"
"$BIN/ecl-data" synth --out "$DIR/data" --sites 3 --per-site "$PER_SITE" --test-size 20 \
  --size 64 --missing-per-site 0 --workers 1 --quiet

echo "== 2. provisioning the network (CA + one bundle per hospital)"
"$BIN/hospital-node" provision "$NETWORK" --out "$DIR" >/dev/null
ls -1 "$DIR"/N*/node.toml

echo "== 3. starting ${NAMES[*]} (logs in $DIR/logs)"
MAX_STEPS=()
[ -n "$STEPS" ] && MAX_STEPS=(--max-steps "$STEPS")
for name in "${NAMES[@]}"; do
  "$BIN/hospital-node" run --config "$DIR/$name/node.toml" "${MAX_STEPS[@]}" "${RUN_ARGS[@]}" \
    --set run.max_steps_per_second=5 --set training.checkpoint_every=25 \
    --set evaluation.every=50 --set evaluation.ci_every=4 --set exchange.mean_interval_s=2 \
    --set exchange.join_timeout_s=10 --set metrics.share="$SHARE" \
    --set metrics.interval_s=5 --set metrics.min_positives=5 >"$DIR/logs/$name.log" 2>&1 &
  PIDS+=("$!")
done

if [ -n "$STEPS" ]; then
  echo "== 4. training $STEPS steps (at most ${TIMEOUT} s)"
  deadline=$((SECONDS + TIMEOUT))
  for i in "${!PIDS[@]}"; do
    while kill -0 "${PIDS[$i]}" 2>/dev/null; do
      [ "$SECONDS" -ge "$deadline" ] && { echo "not done within ${TIMEOUT} s" >&2; exit 1; }
      sleep 2
    done
    wait "${PIDS[$i]}" || { echo "${NAMES[$i]} failed; see $DIR/logs" >&2; exit 1; }
  done
  PIDS=()
  for name in "${NAMES[@]}"; do tail -n 1 "$DIR/logs/$name.log"; done
  echo "done: results stores under $DIR/N*/state/results.sqlite"
  exit 0
fi

echo "== 4. waiting (at most ${TIMEOUT} s) until every node has swapped with both neighbours"
"$BIN/python" - "$DIR" "$TIMEOUT" "${PIDS[@]}" <<'EOF'
import json, sys, time
from pathlib import Path
root, timeout, pids = Path(sys.argv[1]), float(sys.argv[2]), [int(p) for p in sys.argv[3:]]
deadline = time.monotonic() + timeout
names = ["N1", "N2", "N3"]
while time.monotonic() < deadline:
    done = []
    for name, pid in zip(names, pids):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            state = "gone"
        if state in ("gone", "Z"):
            sys.exit(f"{name} exited early; see {root}/logs/{name}.log")
        try:
            s = json.loads((root / name / "state" / "status.json").read_text())
        except (OSError, ValueError):
            continue
        peers = s.get("peers", {}).values()
        if s.get("pid") == pid and s.get("state") == "training" and all(
            p.get("received_this_boot", 0) >= 2 for p in peers
        ):
            done.append(name)
    if len(done) == len(names):
        print("all three nodes have swapped with both neighbours")
        sys.exit(0)
    time.sleep(1)
sys.exit(f"no swaps on every edge within {timeout:.0f} s; see {root}/logs/")
EOF

echo "== 5. hospital-node status"
for name in "${NAMES[@]}"; do
  "$BIN/hospital-node" status --config "$DIR/$name/node.toml" || true
done

echo "== 6. stopping with SIGTERM (final checkpoint, store status 'interrupted')"
cleanup
PIDS=()
for name in "${NAMES[@]}"; do
  tail -n 1 "$DIR/logs/$name.log"
done
echo "done: bundles, state and results stores under $DIR"
