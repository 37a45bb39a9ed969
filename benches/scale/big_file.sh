#!/usr/bin/env bash
# One big file synced compute -> project through the real daemons
# (`unionsync project serve` + `unionsync compute run` on loopback), beside
# the same bytes moved by `tar | lz4 -1 | lz4 -d | tar` in the same run.
# Prints wall times, their ratio, and each daemon's peak RSS (VmHWM).
#
# Content: a 64 MiB block from /dev/urandom repeated (lz4's window is
# 64 KiB: it cannot squash the repeats).
#
# Usage: benches/scale/big_file.sh [GiB] [unionsync binary]
#   defaults: 20, target/release/unionsync (cargo build --release -p unionsync)
# Needs 2 x GiB free in $TMPDIR (the file, then one copy of it at a time);
# everything is deleted at the end, also on failure.
set -euo pipefail

gib=${1:-20}
bin=$(realpath "${2:-target/release/unionsync}")
for tool in tar lz4 cmp; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
[ -x "$bin" ] || { echo "no $bin: cargo build --release -p unionsync" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/home" "$work/upper" "$work/whiteouts" "$work/out" "$work/run"
head -c 32 /dev/urandom | base64 > "$work/token"
chmod 600 "$work/token"
head -c $((64 << 20)) /dev/urandom > "$work/block"
for _ in $(seq $((gib * 16))); do cat "$work/block"; done > "$work/upper/big"
rm "$work/block"
size=$(stat -c %s "$work/upper/big")

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
peak() { awk '/^VmHWM:/ {printf "%d MiB", $2 / 1024}' "/proc/$1/status"; }
now() { date +%s.%N; }

export XDG_RUNTIME_DIR="$work/run"
start=$(now)
"$bin" project serve --home "$work/home" --listen "127.0.0.1:$port" \
    --token-file "$work/token" 2> "$work/project.log" &
project=$!
pids+=("$project")
until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do sleep 0.05; done
"$bin" compute run --upper "$work/upper" --whiteouts "$work/whiteouts" \
    --lower "$work/home" --project "ws://127.0.0.1:$port/" --id 1 \
    --token-file "$work/token" --interval-min 0.2 --interval-max 0.5 \
    2> "$work/compute.log" &
compute=$!
pids+=("$compute")
# Staged content is renamed into place whole: the full size is the end.
until [ "$(stat -c %s "$work/home/big" 2>/dev/null || echo 0)" = "$size" ]; do
    kill -0 "$project" "$compute" || { tail "$work"/*.log >&2; exit 1; }
    sleep 0.1
done
ours=$(echo "$(now) - $start" | bc)
project_peak=$(peak "$project")
compute_peak=$(peak "$compute")
kill "$compute" "$project"
cmp "$work/upper/big" "$work/home/big" || { echo "content differs" >&2; exit 1; }
rm "$work/home/big"

start=$(now)
tar -C "$work/upper" -cf - big | lz4 -1 -q | lz4 -d -q | tar -C "$work/out" -xf -
baseline=$(echo "$(now) - $start" | bc)
rm "$work/out/big"

printf 'file: %d GiB (%d bytes), compute -> project\n' "$gib" "$size"
printf '%-44s %8.1f s  %7.0f MB/s\n' "unionsync (both daemons, loopback)" "$ours" \
    "$(echo "$size / $ours / 1000000" | bc -l)"
printf '%-44s %8.1f s  %7.0f MB/s\n' "tar | lz4 -1 | lz4 -d | tar" "$baseline" \
    "$(echo "$size / $baseline / 1000000" | bc -l)"
printf 'ratio unionsync / baseline: %.2f\n' "$(echo "$ours / $baseline" | bc -l)"
printf 'peak RSS: compute daemon %s, project server %s\n' "$compute_peak" "$project_peak"
