#!/usr/bin/env bash
# Three hospital nodes as CONTAINERS on this machine (host networking, loopback, mutual TLS):
# local base image (if missing) -> node image (buildah) -> synthetic sites -> provisioned
# bundles -> 3 x `podman run` -> wait (bounded) until every node has swapped with both
# neighbours -> `hospital-node status` of each -> `podman stop -t 30` (SIGTERM, graceful
# shutdown) -> exit status. Containers (and, unless KEEP_STATE=1, their state volumes) are
# removed on every exit path.
#
#   sudo scripts/container_3_nodes.sh
#   TIMEOUT_S=300 PORT_BASE=50071 WORK=/tmp/c3 scripts/container_3_nodes.sh
#
# Needs: podman buildah runc (and debootstrap to make the local base image), root (or a
# working rootless podman), the project venv (.venv) for `ecl-data` / `hospital-node provision`
# (without it both run inside the image). Exit status: 0 all swapped and stopped cleanly;
# 1 a node failed, did not swap in time or did not stop cleanly; 2 missing tools / bad setup.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${WORK:-$ROOT/build/container-3-nodes}"
IMAGE="${IMAGE:-localhost/ecl-hospital-node:dev}"
BASE_IMAGE="${BASE_IMAGE:-localhost/debian-bookworm:minbase}"
TORCH_WHEEL="${TORCH_WHEEL:-/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl}"
HOST_CERTS="${HOST_CERTS:-/etc/ssl/certs}"       # mounted at /hostcerts during the build
TIMEOUT_S="${TIMEOUT_S:-300}"                    # bound on the wait-for-swaps phase
PORT_BASE="${PORT_BASE:-50071}"                  # N1 on PORT_BASE, N2 on +1, N3 on +2
PREFIX="${PREFIX:-ecl3}"                         # container and volume names
KEEP_STATE="${KEEP_STATE:-0}"                    # 1: keep the state volumes afterwards
BUILD="${BUILD:-1}"                              # 0: reuse $IMAGE if it exists
VENV_BIN="${VENV_BIN:-$ROOT/.venv/bin}"
NAMES=(N1 N2 N3)
NODE_UID=10001
# Inside the container everything the node writes goes to the /state volume (as the image's CMD).
STATE_ARGS=(--set node.state_dir=/state --set node.results_store=/state/results.sqlite
            --set node.checkpoint_dir=/state/checkpoints)
# A quick demo on a shared 2-core machine: throttled steps, frequent swaps, short join wait.
DEMO_ARGS=(--set training.max_steps_per_second=5 --set training.checkpoint_every=25
           --set training.eval_every=50 --set exchange.mean_interval_s=2
           --set exchange.join_timeout_s=10)

T0=$(date +%s)
log() { printf '[%4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
die() { echo "error: $*" >&2; exit 2; }

for tool in podman buildah runc python3; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing: apt-get install -y podman buildah \
runc debootstrap fuse-overlayfs uidmap slirp4netns (see docs/hospital-it.md)"
done

mkdir -p "$WORK"
# podman here needs runc and no default ulimits (docs/hospital-it.md, "Containers on one host").
export CONTAINERS_CONF="$WORK/containers.conf"
printf '[containers]\ndefault_ulimits = []\n' >"$CONTAINERS_CONF"
PODMAN=(podman --runtime runc)
# Without systemd podman cannot schedule the image's HEALTHCHECK timer and says so on every
# run/stop; the check itself works (`podman healthcheck run`, step 7). Drop that noise only.
quiet_systemd() { grep -v 'systemd connection' || true; }

WHEEL_LINK=""
cleanup() {
  local rc=$?
  set +e
  for name in "${NAMES[@]}"; do
    "${PODMAN[@]}" rm -f -t 0 "$PREFIX-$name" >/dev/null 2>&1
    [ "$KEEP_STATE" = 1 ] || "${PODMAN[@]}" volume rm -f "$PREFIX-$name-state" >/dev/null 2>&1
  done
  [ -n "$WHEEL_LINK" ] && rm -f "$WHEEL_LINK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. base image -----------------------------------------------------------------------------
if "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
  log "1. base image $BASE_IMAGE: present"
elif [ "$BASE_IMAGE" = "localhost/debian-bookworm:minbase" ]; then
  command -v debootstrap >/dev/null 2>&1 || die "debootstrap is missing (apt-get install debootstrap)"
  [ "$(id -u)" = 0 ] || die "making the base image with debootstrap needs root"
  log "1. base image: debootstrap --variant=minbase bookworm (30 s to a few minutes)"
  rootfs="$WORK/rootfs"
  rm -rf "$rootfs"
  debootstrap --variant=minbase bookworm "$rootfs" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -n 20 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log: $WORK/debootstrap.log)"; }
  # debootstrap leaves the downloaded .debs (~40 MB) behind: keep them out of the base layer
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | "${PODMAN[@]}" import - "$BASE_IMAGE" >"$WORK/import.log" 2>&1 \
    || { cat "$WORK/import.log" >&2; die "podman import failed"; }
  rm -rf "$rootfs"
else
  die "base image $BASE_IMAGE not found"
fi

# --- 2. node image -----------------------------------------------------------------------------
BUILD_S=0
if [ "$BUILD" = 1 ] || ! "${PODMAN[@]}" image exists "$IMAGE"; then
  log "2. building $IMAGE from $BASE_IMAGE (buildah, cached layers are reused)"
  build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
  if [ -f "$TORCH_WHEEL" ]; then  # torch from the local CPU wheel instead of a download
    WHEEL_LINK="$ROOT/deploy/wheels/$(basename "$TORCH_WHEEL")"
    ln -f "$TORCH_WHEEL" "$WHEEL_LINK" 2>/dev/null || cp "$TORCH_WHEEL" "$WHEEL_LINK"
  fi
  volume_args=()
  if [ -f "$HOST_CERTS/ca-certificates.crt" ]; then  # pip behind a TLS-inspecting proxy
    volume_args=(-v "$HOST_CERTS:/hostcerts:ro")
    build_args+=(--build-arg PIP_CERT=/hostcerts/ca-certificates.crt)
  fi
  b0=$(date +%s)
  buildah bud --isolation chroot --network host --format docker --layers \
    "${volume_args[@]}" "${build_args[@]}" -f "$ROOT/Containerfile" -t "$IMAGE" "$ROOT" \
    >"$WORK/build.log" 2>&1 \
    || { tail -n 30 "$WORK/build.log" >&2; echo "error: image build failed (log: $WORK/build.log)" >&2; exit 1; }
  BUILD_S=$(( $(date +%s) - b0 ))
  [ -n "$WHEEL_LINK" ] && rm -f "$WHEEL_LINK" && WHEEL_LINK=""
  log "   built in ${BUILD_S} s (log: $WORK/build.log)"
else
  log "2. node image $IMAGE: present (BUILD=0)"
fi
IMAGE_BYTES=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE")
log "   image size: $(( IMAGE_BYTES / 1000000 )) MB"

# Tools from the venv when there is one, else from the image (as root, writing into $WORK).
in_image() {
  "${PODMAN[@]}" run --rm --network none --user 0 -v "$WORK:$WORK" -w "$WORK" "$IMAGE" "$@"
}
ecl_data() { if [ -x "$VENV_BIN/ecl-data" ]; then "$VENV_BIN/ecl-data" "$@"; else in_image ecl-data "$@"; fi; }
hospital_node() {
  if [ -x "$VENV_BIN/hospital-node" ]; then "$VENV_BIN/hospital-node" "$@"; else in_image hospital-node "$@"; fi
}

# --- 3. synthetic sites ------------------------------------------------------------------------
if [ -f "$WORK/data/N3/labels.csv" ]; then
  log "3. synthetic sites in $WORK/data: present"
else
  log "3. synthetic sites: ecl-data synth --sites 3 --per-site 40 --test-size 60 --size 64"
  rm -rf "$WORK/data"
  # --missing-per-site 0: with only 3 sites, absent findings would leave some finding at < 3 sites
  ecl_data synth --out "$WORK/data" --sites 3 --per-site 40 --test-size 60 --size 64 \
    --missing-per-site 0 --workers 1 --quiet
fi
chmod -R a+rX "$WORK/data"  # the node runs as uid $NODE_UID and reads its site read-only

# --- 4. provisioning ---------------------------------------------------------------------------
log "4. provisioning a 3-node ring on 127.0.0.1:$PORT_BASE-$(( PORT_BASE + 2 ))"
{
  echo "# Written by scripts/container_3_nodes.sh: three containers on one host (host networking)."
  echo 'name = "container-3-nodes"'
  echo 'topology = "ring"'
  for i in 0 1 2; do
    cat <<EOF

[[hospitals]]
name = "${NAMES[$i]}"
host = "127.0.0.1"
listen = "127.0.0.1"
port = $(( PORT_BASE + i ))
site_dir = "/data/site"
results_store = "/state/results.sqlite"
checkpoint_dir = "/state/checkpoints"
EOF
  done
  printf '\n[algorithm]\nmethod = "ecl-pdmm"\nlearning_rate = 0.05\nconsensus_weight = 0.5\n'
} >"$WORK/network.toml"
rm -rf "$WORK/bundles"
hospital_node provision "$WORK/network.toml" --out "$WORK/bundles" >/dev/null
# The container user must read its bundle (the key stays 0600, owned by that user).
for name in "${NAMES[@]}"; do
  if [ "$(id -u)" = 0 ]; then
    chown -R "$NODE_UID:$NODE_UID" "$WORK/bundles/$name"
  else
    podman unshare chown -R "$NODE_UID:$NODE_UID" "$WORK/bundles/$name"
  fi
done
ls -l "$WORK/bundles/N1" | sed 's/^/     /'

for i in 0 1 2; do
  port=$(( PORT_BASE + i ))
  python3 - "$port" <<'EOF' || die "port $(( PORT_BASE + i )) on 127.0.0.1 is in use: set PORT_BASE"
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
finally:
    s.close()
EOF
done

# --- 5. start the containers -------------------------------------------------------------------
log "5. starting ${PREFIX}-N1..N3 (runc, host networking, read-only root and site, /state volume)"
for name in "${NAMES[@]}"; do
  "${PODMAN[@]}" rm -f -t 0 "$PREFIX-$name" >/dev/null 2>&1 || true
  "${PODMAN[@]}" volume rm -f "$PREFIX-$name-state" >/dev/null 2>&1 || true
  "${PODMAN[@]}" volume create "$PREFIX-$name-state" >/dev/null
  "${PODMAN[@]}" run -d --name "$PREFIX-$name" --network host \
    --read-only --tmpfs /tmp:rw,size=64m,mode=1777 --cap-drop all \
    --security-opt no-new-privileges \
    -v "$WORK/data/$name:/data/site:ro" \
    -v "$WORK/bundles/$name:/bundle:ro" \
    -v "$PREFIX-$name-state:/state" \
    -e OMP_NUM_THREADS=1 \
    "$IMAGE" hospital-node run --config /bundle/node.toml "${STATE_ARGS[@]}" "${DEMO_ARGS[@]}" \
    >/dev/null 2> >(quiet_systemd >&2)
done
START=$(date +%s)

node_status() {  # NAME [--json]: `hospital-node status` inside the running container
  "${PODMAN[@]}" exec "$PREFIX-$1" hospital-node status --config /bundle/node.toml \
    "${STATE_ARGS[@]}" "${@:2}"
}

# --- 6. wait until every node has swapped with both neighbours ---------------------------------
log "6. waiting (at most ${TIMEOUT_S} s) until every node has received >= 2 swaps from each neighbour"
declare -A SWAPPED_AT=()
ok=0
while [ $(( $(date +%s) - START )) -lt "$TIMEOUT_S" ]; do
  for name in "${NAMES[@]}"; do
    running=$("${PODMAN[@]}" inspect --format '{{.State.Running}}' "$PREFIX-$name" 2>/dev/null || echo false)
    if [ "$running" != true ]; then
      echo "error: $PREFIX-$name exited early; its log:" >&2
      "${PODMAN[@]}" logs --tail 30 "$PREFIX-$name" >&2 || true
      exit 1
    fi
    [ -n "${SWAPPED_AT[$name]:-}" ] && continue
    if node_status "$name" --json 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
peers = s.get("peers") or {}
ok = (s.get("health") == "SERVING" and s.get("state") == "training" and len(peers) == 2
      and all((p.get("received_this_boot") or 0) >= 2 and (p.get("applied") or 0) >= 1
              for p in peers.values()))
sys.exit(0 if ok else 1)'; then
      SWAPPED_AT[$name]=$(( $(date +%s) - START ))
      log "   $name has swapped with both neighbours (${SWAPPED_AT[$name]} s after start)"
    fi
  done
  if [ "${#SWAPPED_AT[@]}" = "${#NAMES[@]}" ]; then ok=1; break; fi
  sleep 3
done

# --- 7. status of each node + the image's HEALTHCHECK ------------------------------------------
log "7. hospital-node status (inside each container)"
for name in "${NAMES[@]}"; do
  node_status "$name" || true
done
for name in "${NAMES[@]}"; do  # the image's HEALTHCHECK command, run once by hand
  health=$("${PODMAN[@]}" healthcheck run "$PREFIX-$name" 2>/dev/null || true)
  log "   podman healthcheck run $PREFIX-$name: ${health:-healthy}"
done

# --- 8. graceful stop ---------------------------------------------------------------------------
log "8. podman stop -t 30 (SIGTERM: stop swaps, final checkpoint, store status 'interrupted')"
s0=$(date +%s)
"${PODMAN[@]}" stop -t 30 "${NAMES[@]/#/$PREFIX-}" >/dev/null 2> >(quiet_systemd >&2)
STOP_S=$(( $(date +%s) - s0 ))
clean=1
for name in "${NAMES[@]}"; do
  code=$("${PODMAN[@]}" inspect --format '{{.State.ExitCode}}' "$PREFIX-$name")
  last=$("${PODMAN[@]}" logs --tail 1 "$PREFIX-$name" 2>&1)
  echo "     $name exit $code: $last"
  [ "$code" = 0 ] || clean=0
done

# --- 9. what each node left on its state volume ---------------------------------------------
log "9. state volumes after the stop"
for name in "${NAMES[@]}"; do
  mount=$("${PODMAN[@]}" volume inspect --format '{{.Mountpoint}}' "$PREFIX-$name-state")
  python3 - "$name" "$mount" <<'EOF' || clean=0
import json, sys
from pathlib import Path
name, root = sys.argv[1], Path(sys.argv[2])
status = json.loads((root / "status.json").read_text())
ckpts = sorted((root / "checkpoints").glob("ckpt-*.safetensors"))
store = root / "results.sqlite"
newest = f"{ckpts[-1].name} {ckpts[-1].stat().st_size / 1e6:.2f} MB" if ckpts else "none"
print(f"     {name}: state {status['state']}, step {status['step']}, {len(ckpts)} checkpoints "
      f"(newest {newest}), results store {store.stat().st_size / 1e3:.0f} kB")
sys.exit(0 if status["state"] == "stopped" and ckpts else 1)
EOF
done

TOTAL_S=$(( $(date +%s) - T0 ))
echo
echo "summary: image $IMAGE $(( IMAGE_BYTES / 1000000 )) MB (build ${BUILD_S} s); swaps on every" \
  "edge: $([ "$ok" = 1 ] && echo yes || echo NO)" \
  "($(for n in "${NAMES[@]}"; do printf '%s %ss ' "$n" "${SWAPPED_AT[$n]:--}"; done| sed 's/ $//'));" \
  "stop ${STOP_S} s; clean exit: $([ "$clean" = 1 ] && echo yes || echo NO); total ${TOTAL_S} s"
if [ "$ok" != 1 ]; then
  echo "error: not every node swapped with both neighbours within ${TIMEOUT_S} s" >&2
  exit 1
fi
[ "$clean" = 1 ] || { echo "error: a node did not stop cleanly (exit status above)" >&2; exit 1; }
