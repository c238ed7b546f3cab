#!/usr/bin/env bash
# deploy/compose.yaml run for real with podman-compose, three of its hospitals (n1 n2 n3) on a
# 3-node ring (deploy/network-3.toml, 127.0.0.1:50051-50053): synthetic sites -> bundles ->
# `podman-compose up -d n1 n2 n3` -> wait (bounded) until every node has swapped with both
# neighbours -> `podman-compose exec n3 hospital-node status` -> kill -9 one node and wait
# until compose's restart policy brings it back from its checkpoint -> `podman-compose stop`
# (SIGTERM, final checkpoints, exit 0) -> `podman-compose down` (and its volumes unless
# KEEP_STATE=1). Exit status: 0 all of that worked; 1 a step failed; 2 missing tools / setup.
#
#   scripts/container_3_nodes.sh            # builds the image first (or: podman build ...)
#   IMAGE=localhost/ecl-hospital-node:dev scripts/compose_3_nodes.sh
#
# Needs: podman, runc, podman-compose (pip install podman-compose; PODMAN_COMPOSE=path), root or
# a working rootless podman, the node image, and ecl-data / hospital-node (the project venv, or
# VENV_BIN=...; PYTHONPATH may point at a source tree).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${WORK:-$ROOT/build/compose-3-nodes}"
IMAGE="${IMAGE:-localhost/ecl-hospital-node:dev}"
VENV_BIN="${VENV_BIN:-$ROOT/.venv/bin}"
PODMAN_COMPOSE="${PODMAN_COMPOSE:-$(command -v podman-compose || echo "$VENV_BIN/podman-compose")}"
PROJECT="${PROJECT:-ecl-hospitals-3}"
TIMEOUT_S="${TIMEOUT_S:-300}"            # bound on each wait
KEEP_STATE="${KEEP_STATE:-0}"
NAMES=(N1 N2 N3)
STATE_ARGS=(--set node.state_dir=/state --set node.results_store=/state/results.sqlite
            --set node.checkpoint_dir=/state/checkpoints)

T0=$(date +%s)
log() { printf '[%4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
die() { echo "error: $*" >&2; exit 2; }
fail() { echo "error: $*" >&2; exit 1; }

command -v podman >/dev/null || die "podman is missing (apt-get install podman runc)"
[ -x "$PODMAN_COMPOSE" ] || die "podman-compose is missing: pip install podman-compose"
[ -x "$VENV_BIN/hospital-node" ] || die "no $VENV_BIN/hospital-node: make the venv or set VENV_BIN"
mkdir -p "$WORK"
# This machine kind: runc, and no default ulimits (docs/hospital-it.md section 14).
export CONTAINERS_CONF="$WORK/containers.conf"
printf '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n' >"$CONTAINERS_CONF"
podman image exists "$IMAGE" || die "image $IMAGE not found: run scripts/container_3_nodes.sh"
export ECL_IMAGE="$IMAGE" ECL_DATA="$WORK/data" ECL_BUNDLES="$WORK/bundles"
COMPOSE=("$PODMAN_COMPOSE" -p "$PROJECT" -f "$ROOT/deploy/compose.yaml")
# Without systemd podman cannot schedule HEALTHCHECK timers and says so on every start.
quiet() { grep -v -e 'systemd connection' -e '^[0-9a-f]\{64\}$' || true; }

cleanup() {
  local rc=$?
  set +e
  if [ "$KEEP_STATE" = 1 ]; then "${COMPOSE[@]}" down >/dev/null 2>&1
  else "${COMPOSE[@]}" down -v >/dev/null 2>&1; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "1. sites and bundles in $WORK (ecl-data synth; hospital-node provision deploy/network-3.toml)"
rm -rf "$WORK/data" "$WORK/bundles"
"$VENV_BIN/ecl-data" synth --out "$WORK/data" --sites 3 --per-site 40 --test-size 60 --size 64 \
  --missing-per-site 0 --workers 1 --quiet >/dev/null
chmod -R a+rX "$WORK/data"
"$VENV_BIN/hospital-node" provision "$ROOT/deploy/network-3.toml" --out "$WORK/bundles" >/dev/null
for name in "${NAMES[@]}"; do chown -R 10001:10001 "$WORK/bundles/$name"; done

log "2. ${COMPOSE[*]} up -d n1 n2 n3"
"${COMPOSE[@]}" down -v >/dev/null 2>&1 || true
"${COMPOSE[@]}" up -d n1 n2 n3 2>&1 | quiet
UP=$(date +%s)

swapped() {  # NAME: SERVING, training, >= 2 swaps received from both neighbours this boot
  podman exec "ecl-$1" hospital-node status --config /bundle/node.toml "${STATE_ARGS[@]}" --json \
    2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
peers = (s.get("peers") or {}).values()
ok = s.get("health") == "SERVING" and s.get("state") == "training" and len(peers) == 2 and all(
    (p.get("received_this_boot") or 0) >= 2 for p in peers)
sys.exit(0 if ok else 1)'
}

wait_swaps() {  # NAMES...: until each has swapped; prints seconds
  local start=$(date +%s) name
  for name in "$@"; do
    until swapped "$name"; do
      [ $(( $(date +%s) - start )) -lt "$TIMEOUT_S" ] || fail "$name did not swap within $TIMEOUT_S s"
      sleep 3
    done
  done
  echo $(( $(date +%s) - start ))
}

log "3. waiting (at most $TIMEOUT_S s) until every node has swapped with both neighbours"
SWAP_S=$(wait_swaps "${NAMES[@]}")
log "   all swapped $SWAP_S s after up"
"${COMPOSE[@]}" exec n3 hospital-node status --config /bundle/node.toml "${STATE_ARGS[@]}" | head -6

log "4. kill -9 N2's process (a crash): restart: unless-stopped must bring it back"
kill -9 "$(podman inspect --format '{{.State.Pid}}' ecl-N2)"
k0=$(date +%s)
until [ "$(podman inspect --format '{{.RestartCount}}' ecl-N2)" -ge 1 ] 2>/dev/null \
    && podman logs ecl-N2 2>&1 | grep -q "resumed from checkpoint"; do
  [ $(( $(date +%s) - k0 )) -lt "$TIMEOUT_S" ] || fail "N2 was not restarted within $TIMEOUT_S s"
  sleep 2
done
RESUME_S=$(wait_swaps N2)
log "   $(podman logs ecl-N2 2>&1 | grep 'resumed from checkpoint' | tail -1 | sed 's/.*runtime: //')"
log "   restarted and swapping again $(( $(date +%s) - k0 )) s after the kill"

log "5. ${COMPOSE[*]} stop n1 n2 n3 (SIGTERM, stop_grace_period 60 s)"
s0=$(date +%s)
"${COMPOSE[@]}" stop n1 n2 n3 2>&1 | quiet >/dev/null
STOP_S=$(( $(date +%s) - s0 ))
clean=1
for name in "${NAMES[@]}"; do
  code=$(podman inspect --format '{{.State.ExitCode}}' "ecl-$name")
  echo "     $name exit $code: $(podman logs --tail 1 "ecl-$name" 2>&1 | sed 's/.*runtime: //')"
  [ "$code" = 0 ] || clean=0
done
[ "$clean" = 1 ] || fail "a node did not stop cleanly"
echo "summary: $IMAGE via podman-compose: every edge swapped ${SWAP_S} s after up; N2 back" \
  "from kill -9 and swapping $(( RESUME_S )) s after its restart; stop ${STOP_S} s, exit 0;" \
  "total $(( $(date +%s) - T0 )) s"
