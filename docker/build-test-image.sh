#!/usr/bin/env bash
# Build the training image for tests on a private Docker engine, optionally run a command
# against it, then remove everything this run started.
#
#   docker/build-test-image.sh                  build, print the image's size and build times
#   docker/build-test-image.sh -- CMD [ARG...]  build, run CMD with DOCKER_HOST and
#                                               QUANTLAB_TEST_IMAGE set, exit with CMD's status
#
# The image is docker/Dockerfile with two substitutions, for tests only and never pushed:
#   - base: Debian bookworm (Python 3.11) made with debootstrap from this machine's apt mirror
#     and imported as local/debian:bookworm (no registry is needed), with this machine's CA
#     bundle copied in and PIP_CERT pointing at it, so pip trusts an intercepting proxy;
#   - torch: the CPU wheel (TORCH_VERSION+cpu), taken from the pip configuration of the
#     calling Python (a local wheel cache) or from download.pytorch.org, and served to the
#     build from 127.0.0.1 through TORCH_FIND_LINKS.
#
# The engine is a dockerd of its own, stopped by its PID at the end: its own data root,
# socket and exec root, no bridge, no iptables rules, no IP forwarding; builds and the tests'
# containers use host networking or none. A dockerd without a bridge deletes any interface
# named docker0, so on a machine where another engine has one, this engine gets an empty
# bridge of its own instead (on 192.0.2.0/24, a range reserved for documentation), deleted
# at the end, and docker0 is left as it was. Unless QUANTLAB_DOCKER_STATE=DIR names a folder to
# keep between runs (the base image and build cache are then reused), its whole state, with
# every image and all build cache, is deleted (it lives in a new folder under
# QUANTLAB_DOCKER_TMP, default /var/tmp). Nothing outside that state is touched.
#
# Needs root, `apt-get install -y docker.io debootstrap`, and a Python with pip (PYTHON,
# default python3). The docker.io package's own client (/usr/bin/docker) is used, with
# BuildKit, because the daemon's built-in BuildKit needs no buildx plugin.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${QUANTLAB_TEST_IMAGE:-quantlab/trainer:test}"
BASE=local/debian:bookworm
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
BASE_CA=/etc/ssl/certs/build-ca-bundle.crt
DOCKERD=/usr/sbin/dockerd
DOCKER=/usr/bin/docker
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="$(sed -n 's/^ARG TORCH_VERSION=//p' docker/Dockerfile)"

if [ "${1:-}" = "--" ]; then shift; elif [ $# -gt 0 ]; then
    echo "usage: $0 [-- COMMAND [ARG...]]" >&2; exit 2
fi
say() { echo "build-test-image: $*" >&2; }
die() { say "$*"; exit 2; }
[ "$(id -u)" = 0 ] || die "must run as root (it starts dockerd and runs debootstrap)"
for tool in "$DOCKERD" "$DOCKER" /usr/sbin/debootstrap; do
    [ -x "$tool" ] || die "$tool is missing: apt-get install -y docker.io debootstrap"
done
[ -r "$CA_BUNDLE" ] || die "no CA bundle at $CA_BUNDLE (set CA_BUNDLE)"

if [ -n "${QUANTLAB_DOCKER_STATE:-}" ]; then
    STATE="$(mkdir -p "$QUANTLAB_DOCKER_STATE" && cd "$QUANTLAB_DOCKER_STATE" && pwd)"
    KEEP=1
else
    STATE="$(mktemp -d "${QUANTLAB_DOCKER_TMP:-/var/tmp}/quantlab-docker.XXXXXX")"
    KEEP=0
fi
exec 9>"$STATE/lock"
flock -n 9 || die "$STATE is in use by another run"
export DOCKER_HOST="unix://$STATE/docker.sock"
export DOCKER_BUILDKIT=1
DOCKERD_PID=""
SERVER_PID=""
OWN_BRIDGE=""

cleanup() {
    local status=$?
    set +e
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    if [ -n "$DOCKERD_PID" ]; then
        # Containers a failed command left behind go first; then the daemon, by its PID.
        local left
        left="$("$DOCKER" ps -aq 2>/dev/null)"
        # shellcheck disable=SC2086  # one argument per container id
        [ -n "$left" ] && "$DOCKER" rm -f $left >/dev/null 2>&1
        kill -TERM "$DOCKERD_PID" 2>/dev/null
        for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$DOCKERD_PID" 2>/dev/null
        wait "$DOCKERD_PID" 2>/dev/null
        # The containerd that dockerd started goes with it, unless dockerd had to be killed.
        local containerd
        containerd="$(cat "$STATE/exec/containerd/containerd.pid" 2>/dev/null)"
        if [ -n "$containerd" ] && tr '\0' ' ' <"/proc/$containerd/cmdline" 2>/dev/null \
            | grep -qF "$STATE/"; then
            kill -KILL "$containerd"
        fi
    fi
    [ -n "$OWN_BRIDGE" ] && ip link delete "$OWN_BRIDGE" 2>/dev/null
    # Whatever is still mounted below the state (a debootstrap cut short, a killed daemon).
    grep -o " $STATE/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
    if [ "$KEEP" = 0 ]; then rm -rf --one-file-system "$STATE"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_engine() {
    local bridge=(--bridge=none)
    if [ -e /sys/class/net/docker0 ]; then
        command -v ip >/dev/null || die "another engine's docker0 is here and this engine would \
delete it: apt-get install -y iproute2, so that it can have a bridge of its own"
        OWN_BRIDGE="qltest$$"  # at most 13 characters: an interface name takes 15
        # An address of its own, or dockerd gives it docker0's usual one, 172.17.0.1/16.
        ip link add "$OWN_BRIDGE" type bridge && ip address add 192.0.2.1/24 dev "$OWN_BRIDGE" \
            || die "cannot add the bridge $OWN_BRIDGE"
        bridge=(--bridge="$OWN_BRIDGE")
    fi
    "$DOCKERD" --data-root "$STATE/data" --exec-root "$STATE/exec" \
        --pidfile "$STATE/dockerd.pid" --host "$DOCKER_HOST" \
        "${bridge[@]}" --iptables=false --ip-forward=false --ip-masq=false \
        >"$STATE/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 120); do
        "$DOCKER" info >/dev/null 2>&1 && return 0
        kill -0 "$DOCKERD_PID" 2>/dev/null || break
        sleep 0.5
    done
    tail -20 "$STATE/dockerd.log" >&2
    die "dockerd did not come up (log above)"
}

debian_mirror() {
    # The machine's own Debian mirror: deb822 sources first, then one-line sources.
    local found
    found="$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' \
        /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
    [ -n "$found" ] || found="$(awk '$1 == "deb" && $0 !~ /security/ {
        for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)"
    echo "${found:-http://deb.debian.org/debian}"
}

make_base() {
    if "$DOCKER" image inspect "$BASE" >/dev/null 2>&1; then
        say "base $BASE: reused"; return 0
    fi
    local root="$STATE/rootfs" mirror started
    mirror="$(debian_mirror)"
    started=$SECONDS
    rm -rf --one-file-system "$root"
    debootstrap --variant=minbase bookworm "$root" "$mirror" >"$STATE/debootstrap.log" 2>&1 \
        || { tail -20 "$STATE/debootstrap.log" >&2; die "debootstrap from $mirror failed"; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    install -D -m 644 "$CA_BUNDLE" "$root$BASE_CA"
    tar -C "$root" -c . | "$DOCKER" import -c "ENV PIP_CERT=$BASE_CA" - "$BASE" >/dev/null
    rm -rf --one-file-system "$root"
    say "base $BASE: debootstrap from $mirror and import took $((SECONDS - started)) s"
}

fetch_torch() {
    local wheels="$STATE/wheels" want="torch==${TORCH_VERSION}+cpu"
    mkdir -p "$wheels"
    ls "$wheels"/torch-"${TORCH_VERSION}"+cpu-*.whl >/dev/null 2>&1 && return 0
    local args=(-m pip download --quiet --no-deps --only-binary=:all: --dest "$wheels"
        --python-version 3.11 --implementation cp --platform manylinux_2_28_x86_64)
    "$PYTHON" "${args[@]}" "$want" 2>/dev/null \
        || "$PYTHON" "${args[@]}" --retries 1 --index-url https://download.pytorch.org/whl/cpu "$want" \
        || die "no wheel for $want: put one in a pip find-links folder, or reach download.pytorch.org"
}

serve_wheels() {
    # The URL is a build argument, so part of the build cache key: a kept state serves on the
    # port it used last time, when that port is free, so that its cached layers stay valid.
    local port
    port="$(cat "$STATE/wheels.port" 2>/dev/null || echo 0)"
    for try in "$port" 0; do
        : >"$STATE/wheels.log"
        "$PYTHON" -m http.server --bind 127.0.0.1 --directory "$STATE/wheels" "$try" \
            >"$STATE/wheels.log" 2>&1 &
        SERVER_PID=$!
        for _ in $(seq 50); do
            PORT="$(sed -n 's/.* port \([0-9]*\) .*/\1/p' "$STATE/wheels.log")"
            if [ -n "$PORT" ]; then echo "$PORT" >"$STATE/wheels.port"; return 0; fi
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=""
    done
    die "the wheel server did not start: $(cat "$STATE/wheels.log")"
}

start_engine
make_base
fetch_torch
serve_wheels
started=$SECONDS
"$DOCKER" build --network=host --progress=plain -f docker/Dockerfile -t "$IMAGE" \
    --build-arg CUDA_BASE="$BASE" \
    --build-arg TORCH_VERSION="${TORCH_VERSION}+cpu" \
    --build-arg TORCH_INDEX=https://pypi.org/simple \
    --build-arg TORCH_FIND_LINKS="http://127.0.0.1:$PORT/" \
    . >"$STATE/build.log" 2>&1 || { tail -40 "$STATE/build.log" >&2; die "docker build failed"; }
kill "$SERVER_PID" && wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=""
size="$("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE")"
say "image $IMAGE: $((size / 1000000)) MB, built in $((SECONDS - started)) s"

if [ $# -gt 0 ]; then
    export QUANTLAB_TEST_IMAGE="$IMAGE"
    status=0
    "$@" || status=$?
    exit "$status"
fi
