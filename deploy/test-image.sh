#!/usr/bin/env bash
# Build the styletx image and run it for real: container SERVING, one job through the client SDK, non-root.
#
#   deploy/test-image.sh            (root; CI runs it from the repository root)
#
# Steps: apt-install docker.io + debootstrap if missing -> start dockerd if none runs (--iptables=false
# --bridge=none; overlay2, falling back to vfs) -> base image styletx-base:bookworm from debootstrap + docker
# import (skipped when it exists) -> docker build --network host with this machine's pip settings passed as
# build args / BuildKit secrets -> docker run --network host, read-only root, all capabilities dropped -> wait
# for grpc.health.v1 SERVING -> one small stylisation through the client SDK from the host -> UID check, no
# compilers, no pip settings in the final image -> image size. Cleanup runs from a trap, also on failure.
#
# Environment (all optional):
#   PYTHON         host python with the client SDK (default: .venv/bin/python, else python3)
#   IMAGE          tag to build (default styletx:test)     TARGET   Dockerfile target (default cpu)
#   BASE_IMAGE     base image (default styletx-base:bookworm, built here when missing)
#   TORCH_INDEX_URL, ONNXRUNTIME_PACKAGE, FETCH_WEIGHTS   passed through as build args
#   DEBIAN_MIRROR  for debootstrap (default http://deb.debian.org/debian)
#   KEEP_IMAGE=0   remove the built image at the end (default 1: keep it, so the next run hits the cache)
#   SMOKE_ARGS     extra arguments for deploy/smoke_client.py (e.g. "--size 128")
#   PRUNE          after the checks, drop dangling styletx images and old build cache: 1 always, 0 never,
#                  auto (default) when the docker disk has less than PRUNE_BELOW_GB (60) GB free
#   BUILDER_KEEP   BuildKit cache kept when pruning (default 8GB: one CPU image's layers; the oldest entries go first)
#   BUILD_LOG      keep the docker build log at this path (default: a temp file, removed)
#   DOCKER         docker CLI (default /usr/bin/docker from docker.io: its built-in BuildKit needs no buildx)
set -Eeuo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
IMAGE=${IMAGE:-styletx:test}
TARGET=${TARGET:-cpu}
BASE_IMAGE=${BASE_IMAGE:-styletx-base:bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
KEEP_IMAGE=${KEEP_IMAGE:-1}
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=$(command -v python3); fi
fi

WORK=$(mktemp -d /tmp/styletx-test-image.XXXXXX)
CONTAINER=styletx-test-$$
BUILD_LOG=${BUILD_LOG:-$WORK/build.log}
STARTED_DOCKERD=""
INDEX_SERVER_PID=""
T0=$SECONDS

log() { printf '[test-image %4ds] %s\n' "$((SECONDS - T0))" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

# shellcheck disable=SC2329  # invoked by the EXIT trap below
cleanup() {
    local rc=$?
    set +e
    if [[ -n "${DOCKER:-}" ]] && "$DOCKER" container inspect "$CONTAINER" >/dev/null 2>&1; then
        if [[ $rc -ne 0 ]]; then log "container logs (last 40 lines):"; "$DOCKER" logs --tail 40 "$CONTAINER" >&2; fi
        "$DOCKER" rm -f "$CONTAINER" >/dev/null
    fi
    if [[ "$KEEP_IMAGE" == "0" && -n "${DOCKER:-}" ]]; then "$DOCKER" image rm -f "$IMAGE" >/dev/null 2>&1; fi
    [[ -n "$INDEX_SERVER_PID" ]] && kill "$INDEX_SERVER_PID" 2>/dev/null
    if [[ -n "$STARTED_DOCKERD" ]]; then
        kill "$STARTED_DOCKERD" 2>/dev/null
        for _ in $(seq 40); do kill -0 "$STARTED_DOCKERD" 2>/dev/null || break; sleep 0.5; done
    fi
    # dockerd leaves its network-namespace bind mounts under its exec root: unmount before deleting.
    awk -v w="$WORK/" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null
    done
    rm -rf "$WORK"
    if [[ $rc -eq 0 ]]; then log "PASS"; else log "FAILED (exit $rc)"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ensure_packages() {
    local missing=()
    [[ -x /usr/sbin/dockerd ]] || missing+=(docker.io)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    if ((${#missing[@]})); then
        log "apt-get install ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    DOCKER=${DOCKER:-/usr/bin/docker}
    [[ -x "$DOCKER" ]] || DOCKER=$(command -v docker)
}

start_dockerd() {
    if "$DOCKER" info >/dev/null 2>&1; then log "using the running docker daemon"; return; fi
    local driver
    for driver in overlay2 vfs; do
        log "starting dockerd (storage driver $driver)"
        dockerd --iptables=false --bridge=none --storage-driver="$driver" \
            --exec-root "$WORK/dockerd-exec" --pidfile "$WORK/dockerd.pid" >"$WORK/dockerd-$driver.log" 2>&1 &
        STARTED_DOCKERD=$!
        for _ in $(seq 60); do
            "$DOCKER" info >/dev/null 2>&1 && return
            kill -0 "$STARTED_DOCKERD" 2>/dev/null || break
            sleep 0.5
        done
        kill "$STARTED_DOCKERD" 2>/dev/null; wait "$STARTED_DOCKERD" 2>/dev/null || true
        STARTED_DOCKERD=""
        tail -5 "$WORK/dockerd-$driver.log" >&2
    done
    die "dockerd did not start with overlay2 or vfs"
}

build_base_image() {
    if "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then log "base image $BASE_IMAGE exists"; return; fi
    [[ "$BASE_IMAGE" == styletx-base:* ]] || die "base image $BASE_IMAGE is missing (no registry to pull from)"
    log "debootstrap bookworm -> $BASE_IMAGE (about a minute)"
    local rootfs=$WORK/rootfs
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
    # apt's package cache and lists are not needed to run Python (≈ 90 MB).
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | "$DOCKER" import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
        -c 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
}

# pip's settings on this machine, as "key=value" lines, keys without the section ("index-url", "cert", ...).
pip_settings() {
    "$PYTHON" -m pip config list 2>/dev/null | sed -E "s/^[^.]*\.([a-z-]+)='(.*)'$/\1=\2/" || true
}
pip_setting() { pip_settings | awk -F= -v k="$1" '$1 == k {v = substr($0, length(k) + 2)} END {print v}'; }

# file:// indexes and local find-links directories are invisible from inside a build: serve them read-only
# over HTTP on loopback (the build uses --network host) through a directory of symlinks, one per location.
LOCAL_DIRS=()
to_url() {  # sets URL; no command substitution, so that LOCAL_DIRS keeps its additions
    local loc=$1 path top i
    case "$loc" in
        http://* | https://*) URL=$loc; return ;;
        file://*) path=${loc#file://} ;;
        *) path=$loc ;;
    esac
    top=$path
    # Serve the parent of an index's "simple" directory so that its relative ../../files/ links resolve.
    [[ "$(basename "$path")" == simple ]] && top=$(dirname "$path")
    i=${#LOCAL_DIRS[@]}
    LOCAL_DIRS+=("$top")
    ln -s "$top" "$WORK/index/$i"
    URL="http://127.0.0.1:$INDEX_PORT/$i${path#"$top"}"
}
map_urls() {  # sets MAPPED to the space-separated list $1 with local locations turned into loopback URLs
    local u
    MAPPED=""
    for u in $1; do to_url "$u"; MAPPED="${MAPPED:+$MAPPED }$URL"; done
}

free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

prepare_pip_args() {
    mkdir -p "$WORK/index"
    # A fixed port keeps the build args, and with them Docker's layer cache, the same from run to run.
    INDEX_PORT=${STYLETX_INDEX_PORT:-38451}
    if ! "$PYTHON" -c "import socket,sys; socket.create_server(('127.0.0.1', int(sys.argv[1])))" "$INDEX_PORT" \
            2>/dev/null; then
        INDEX_PORT=$(free_port)
    fi
    BUILD_ARGS=()
    local index extra links
    map_urls "$(pip_setting index-url)"; index=$MAPPED
    map_urls "$(pip_setting extra-index-url)"; extra=$MAPPED
    map_urls "$(pip_setting find-links)"; links=$MAPPED
    [[ -n "$index" ]] && BUILD_ARGS+=(--build-arg "PIP_INDEX_URL=$index")
    [[ -n "$extra" ]] && BUILD_ARGS+=(--build-arg "PIP_EXTRA_INDEX_URL=$extra")
    [[ -n "$links" ]] && BUILD_ARGS+=(--build-arg "PIP_FIND_LINKS=$links")
    local trusted
    trusted=$(pip_setting trusted-host)
    ((${#LOCAL_DIRS[@]})) && trusted="$trusted 127.0.0.1"
    [[ -n "${trusted// /}" ]] && BUILD_ARGS+=(--build-arg "PIP_TRUSTED_HOST=${trusted# }")
    local cert constraint
    cert=$(pip_setting cert); cert=${cert:-${PIP_CERT:-}}
    constraint=$(pip_setting constraint); constraint=${constraint:-${PIP_CONSTRAINT:-}}
    [[ -f "$cert" ]] && BUILD_ARGS+=(--secret "id=pip_cert,src=$cert")
    [[ -f "$constraint" ]] && BUILD_ARGS+=(--secret "id=pip_constraint,src=$constraint")
    local arg
    for arg in TORCH_INDEX_URL ONNXRUNTIME_PACKAGE FETCH_WEIGHTS; do
        [[ -n "${!arg:-}" ]] && BUILD_ARGS+=(--build-arg "$arg=${!arg}")
    done
    if ((${#LOCAL_DIRS[@]})); then
        log "serving ${LOCAL_DIRS[*]} on 127.0.0.1:$INDEX_PORT for the build"
        "$PYTHON" -m http.server --bind 127.0.0.1 --directory "$WORK/index" "$INDEX_PORT" \
            >"$WORK/index-server.log" 2>&1 &
        INDEX_SERVER_PID=$!
    fi
    return 0
}

build_image() {
    log "docker build --target $TARGET -t $IMAGE ${BUILD_ARGS[*]}"
    local t=$SECONDS
    DOCKER_BUILDKIT=1 "$DOCKER" build --network host --progress plain --target "$TARGET" -t "$IMAGE" \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" "${BUILD_ARGS[@]}" . >"$BUILD_LOG" 2>&1 \
        || { tail -40 "$BUILD_LOG" >&2; die "docker build failed"; }
    BUILD_SECONDS=$((SECONDS - t))
    [[ -n "$INDEX_SERVER_PID" ]] && { kill "$INDEX_SERVER_PID" 2>/dev/null; INDEX_SERVER_PID=""; }
}

check_image_static() {
    local size
    size=$("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE")
    IMAGE_MB=$((size / 1000000))
    local user
    user=$("$DOCKER" image inspect -f '{{.Config.User}}' "$IMAGE")
    [[ "$user" =~ ^[1-9][0-9]*(:[0-9]+)?$ ]] || die "image USER is '$user', want a numeric non-root UID"
    # The pip settings reach the builder stage only: no trace in the final image's config or history.
    if "$DOCKER" image inspect -f '{{json .Config.Env}}' "$IMAGE" | grep -q 'PIP_'; then
        die "PIP_* settings leaked into the image environment"
    fi
    if "$DOCKER" history --no-trunc "$IMAGE" | grep -q -e 'PIP_INDEX_URL' -e 'PIP_EXTRA_INDEX_URL' -e 'pip_cert'; then
        die "pip settings appear in the image history"
    fi
    # shellcheck disable=SC2016  # expanded by the container's shell, on purpose
    "$DOCKER" run --rm --network none --entrypoint /bin/sh "$IMAGE" -c '
        for c in gcc cc c++ g++ clang make ld; do command -v "$c" && exit 1; done
        [ ! -e "$HOME/.cache/pip" ] && [ ! -e /root/.cache/pip ] && [ ! -e /etc/pip.conf ]
        [ -z "$(find /opt/styletx /opt/venv ! -readable -print -quit)" ]
        styletx-server --help >/dev/null' \
        || die "final image has a compiler, a pip cache/config, a file its user cannot read," \
               "or styletx-server --help fails"
}

run_container() {
    PORT=$(free_port)
    METRICS_PORT=$(free_port)
    log "docker run $IMAGE on 127.0.0.1:$PORT (metrics $METRICS_PORT)"
    # The same constraints as the Helm chart: read-only root with a writable /tmp, no capabilities.
    "$DOCKER" run -d --name "$CONTAINER" --network host --read-only --tmpfs /tmp:rw,nosuid,nodev,size=512m \
        --cap-drop ALL --security-opt no-new-privileges \
        -e STYLETX_HOST=127.0.0.1 -e STYLETX_PORT="$PORT" \
        -e STYLETX_METRICS_HOST=127.0.0.1 -e STYLETX_METRICS_PORT="$METRICS_PORT" \
        "$IMAGE" >/dev/null
}

wait_serving() {
    local t=$SECONDS
    until "$PYTHON" deploy/grpc_health_probe.py --addr "127.0.0.1:$PORT" --quiet 2>/dev/null; do
        [[ "$("$DOCKER" inspect -f '{{.State.Running}}' "$CONTAINER")" == true ]] || die "container exited"
        ((SECONDS - t < 240)) || die "not SERVING after 240 s"
        sleep 1
    done
    STARTUP_SECONDS=$((SECONDS - t))
    log "SERVING after ${STARTUP_SECONDS}s"
    # The image's own HEALTHCHECK command must agree.
    "$DOCKER" exec "$CONTAINER" styletx-healthcheck || die "in-image styletx-healthcheck failed"
}

check_running() {
    local uid host_pid host_uid
    uid=$("$DOCKER" exec "$CONTAINER" id -u)
    host_pid=$("$DOCKER" inspect -f '{{.State.Pid}}' "$CONTAINER")
    host_uid=$(awk '/^Uid:/ {print $2}' "/proc/$host_pid/status")
    [[ "$uid" != 0 && "$host_uid" != 0 ]] || die "server runs as root (uid $uid, host uid $host_uid)"
    log "server process uid $uid (host view $host_uid)"
    "$PYTHON" - "$METRICS_PORT" <<'EOF' || die "metrics endpoint missing or without styletx_queue_depth"
import sys, urllib.request
body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
sys.exit(0 if "styletx_queue_depth" in body else 1)
EOF
}

run_job() {
    log "one small stylisation through the client SDK ($PYTHON)"
    local t=$SECONDS
    local extra=()
    read -r -a extra <<<"${SMOKE_ARGS:-}"
    # This checkout's SDK first on the path, whatever the venv's (editable) install maps.
    PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
        "$PYTHON" deploy/smoke_client.py --addr "127.0.0.1:$PORT" --out "$WORK/result.png" "${extra[@]}" \
        || die "the stylisation through the client SDK failed"
    JOB_SECONDS=$((SECONDS - t))
}

# Earlier builds of the tag are left dangling, each with its own multi-GB venv layer, and BuildKit's cache grows
# by a venv copy per build: drop those, keeping the newest cache (the deps layer, pip's downloads). After the
# checks, so the figures above are the build's and run's own; a fresh CI machine has little to delete.
prune() {
    local t=$SECONDS root free_gb
    case "${PRUNE:-auto}" in
        0) return 0 ;;
        auto)  # deleting gigabytes takes minutes on a busy disk: only when space runs short
            root=$("$DOCKER" info -f '{{.DockerRootDir}}' 2>/dev/null || echo /var/lib/docker)
            free_gb=$(df --output=avail -BG "$root" | tail -1 | tr -dc 0-9)
            ((free_gb < ${PRUNE_BELOW_GB:-60})) || return 0 ;;
    esac
    "$DOCKER" image prune -f --filter "label=org.opencontainers.image.title=styletx" >/dev/null || true
    "$DOCKER" builder prune -f --keep-storage "${BUILDER_KEEP:-8GB}" >/dev/null 2>&1 || true
    log "pruned dangling images and build cache beyond ${BUILDER_KEEP:-8GB} in $((SECONDS - t))s"
}

main() {
    [[ $EUID -eq 0 ]] || die "run as root (apt, dockerd)"
    ensure_packages
    start_dockerd
    build_base_image
    prepare_pip_args
    build_image
    check_image_static
    run_container
    wait_serving
    check_running
    run_job
    log "image $IMAGE ($TARGET): ${IMAGE_MB} MB; build ${BUILD_SECONDS}s, SERVING after ${STARTUP_SECONDS}s," \
        "job ${JOB_SECONDS}s; total $((SECONDS - T0))s"
    "$DOCKER" rm -f "$CONTAINER" >/dev/null
    prune
}

main "$@"; exit $?  # on one line: bash has read it all before running, so edits to this file cannot bite
