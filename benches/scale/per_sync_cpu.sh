#!/usr/bin/env bash
# CPU per sync at scale: N small files synced once, then K syncs with one
# changed file each and K idle syncs; prints the CPU time (utime + stime,
# /proc/<pid>/stat) each daemon spent per sync, and each daemon's peak RSS.
#
#   cargo build --release -p unionsync --bin unionsync
#   benches/scale/per_sync_cpu.sh 10000 100000 200000      # N values, one run each
#
# env:
#   UNIONSYNC   the binary (default target/release/unionsync); a list
#               separated by ':' runs every N with each binary, side by side
#               (e.g. a copy of the base build as "before")
#   K           syncs per measurement (default 20)
#   WHERE       where the N files start: `upper` (default: in the compute
#               side's upper, so the first sync pushes them and every path
#               has a base), or `home` (in the project home, seen through the
#               lower and the index; no base)
#   KEEP        keep the working directory (default: removed)
#
# The union is mounted over the project home itself (a local lower, as
# `unionsync demo` does), so the numbers are the daemons' own work, not a
# network filesystem's. Syncs run only on request (`unionsync sync --wait`):
# the interval is an hour.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 N [N…]" >&2; exit 2; }
here=$(cd "$(dirname "$0")/../.." && pwd)
IFS=: read -r -a bins <<<"${UNIONSYNC:-$here/target/release/unionsync}"
K=${K:-20}
WHERE=${WHERE:-upper}
for bin in "${bins[@]}"; do
    [ -x "$bin" ] || { echo "$bin: not built (cargo build --release -p unionsync --bin unionsync)" >&2; exit 1; }
done
case $WHERE in upper | home) ;; *) echo "WHERE must be upper or home" >&2; exit 2 ;; esac
command -v fusermount3 >/dev/null || { echo "fusermount3 is needed (apt-get install fuse3)" >&2; exit 1; }

tick=$(getconf CLK_TCK)
work=""
pids=()
mnt=""

cleanup() {
    if [ -n "$mnt" ] && mountpoint -q "$mnt"; then
        fusermount3 -u "$mnt" 2>/dev/null || fusermount3 -u -z "$mnt" 2>/dev/null || true
    fi
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    pids=()
    mnt=""
    if [ -n "$work" ] && [ -z "${KEEP:-}" ]; then
        rm -rf "$work"
    fi
    work=""
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# CPU ms (utime + stime) of a process.
cpu_ms() {
    local fields
    read -r -a fields <"/proc/$1/stat"
    # Fields 14 and 15 (1-based) after the command name; the name may hold
    # spaces, so count from the end of "(…)".
    local rest=${fields[*]}
    rest=${rest##*) }
    read -r -a fields <<<"$rest"
    echo $(((fields[11] + fields[12]) * 1000 / tick))
}

peak_mib() {
    awk '/^VmHWM:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"
}

# Fails if the daemon died.
alive() {
    kill -0 "$1" 2>/dev/null || { echo "$2 exited:" >&2; tail -20 "$3" >&2; exit 1; }
}

# Waits (polling, no fixed sleep) until `cmd` succeeds, at most $1 seconds.
wait_until() {
    local limit=$1 what=$2
    shift 2
    local start=$SECONDS
    until "$@"; do
        [ $((SECONDS - start)) -lt "$limit" ] || { echo "timed out waiting for $what" >&2; exit 1; }
        sleep 0.05
    done
}

make_files() { # DIR N: N small files, 1000 per directory
    python3 - "$1" "$2" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "d%04d" % (i // 1000))
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%06d" % i), "w") as f:
        f.write("file %d\n" % i)
EOF
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

run_one() { # BIN N
    local bin=$1 n=$2
    work=$(mktemp -d /tmp/per-sync-cpu.XXXXXX)
    local home=$work/home upper=$work/upper
    mnt=$work/mnt
    mkdir -p "$home" "$upper" "$mnt"
    echo bench-token >"$work/token"
    if [ "$WHERE" = upper ]; then make_files "$upper" "$n"; else make_files "$home" "$n"; fi
    local port
    port=$(free_port)
    RUST_LOG=warn "$bin" project serve --home "$home" --listen "127.0.0.1:$port" \
        --token-file "$work/token" --control "$work/project.sock" >"$work/project.log" 2>&1 &
    local project=$!
    pids+=("$project")
    wait_until 30 "the project server" bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null
    local control=$work/compute.sock
    RUST_LOG=warn "$bin" compute mount --mount "$mnt" --lower "$home" --upper "$upper" \
        --project "ws://127.0.0.1:$port/" --token-file "$work/token" --local-only '' \
        --control "$control" --interval-min 3600 --interval-max 3600 >"$work/compute.log" 2>&1 &
    local compute=$!
    pids+=("$compute")
    wait_until 60 "the mount" mountpoint -q "$mnt"
    # The first sync (due at start) carries the N files.
    local start=$SECONDS
    until "$bin" status --json --control "$control" 2>/dev/null |
        python3 -c 'import json,sys; v=json.load(sys.stdin); sys.exit(0 if v.get("epoch",0)>=1 and v.get("syncing") is None else 1)'; do
        alive "$project" project "$work/project.log"
        alive "$compute" compute "$work/compute.log"
        [ $((SECONDS - start)) -lt 1800 ] || { echo "first sync not done after 30 min" >&2; exit 1; }
        sleep 0.2
    done
    local first=$((SECONDS - start))
    # One more sync settles what the first one left (index news, deferrals).
    "$bin" sync --wait --control "$control" >/dev/null
    local target=$mnt/d0000/f000000
    local p0 c0 p1 c1 t0 t1
    p0=$(cpu_ms "$project") c0=$(cpu_ms "$compute") t0=$(date +%s%N)
    for i in $(seq "$K"); do
        echo "change $i" >"$target"
        "$bin" sync --wait --control "$control" >/dev/null
    done
    p1=$(cpu_ms "$project") c1=$(cpu_ms "$compute") t1=$(date +%s%N)
    local change_p=$(((p1 - p0) / K)) change_c=$(((c1 - c0) / K)) change_wall=$(((t1 - t0) / 1000000 / K))
    p0=$p1 c0=$c1 t0=$(date +%s%N)
    for _ in $(seq "$K"); do
        "$bin" sync --wait --control "$control" >/dev/null
    done
    p1=$(cpu_ms "$project") c1=$(cpu_ms "$compute") t1=$(date +%s%N)
    local idle_p=$(((p1 - p0) / K)) idle_c=$(((c1 - c0) / K)) idle_wall=$(((t1 - t0) / 1000000 / K))
    alive "$project" project "$work/project.log"
    alive "$compute" compute "$work/compute.log"
    grep -q "change $K" "$home/d0000/f000000" || { echo "the last change never reached the project" >&2; exit 1; }
    printf '%-10s %8d %6s %7ds | %6d %6d %6d | %6d %6d %6d | %7d %7d\n' \
        "$(basename "$bin")" "$n" "$WHERE" "$first" \
        "$change_p" "$change_c" "$change_wall" "$idle_p" "$idle_c" "$idle_wall" \
        "$(peak_mib "$project")" "$(peak_mib "$compute")"
    cleanup
}

echo "K=$K syncs each; CPU and wall in ms per sync; peak RSS (VmHWM) in MiB"
printf '%-10s %8s %6s %8s | %6s %6s %6s | %6s %6s %6s | %7s %7s\n' \
    binary files where first "chg-P" "chg-C" "chg-W" "idl-P" "idl-C" "idl-W" "rss-P" "rss-C"
for n in "$@"; do
    for bin in "${bins[@]}"; do
        run_one "$bin" "$n"
    done
done
