#!/usr/bin/env bash
# UNION_MOUNT_CMD for compare.sh: mounts unionsync's union of UPPER over
# LOWER at MOUNTPOINT and returns once it is mounted (the daemon stays in the
# background; compare.sh unmounts it, which stops the daemon).
#
#   UNION_MOUNT_CMD=benches/fs/ours_mount.sh benches/fs/compare.sh
#
# The compute agent points at a project server that is not running: the
# workloads measure the file system alone (the journal records every change;
# no sync competes for the two cores). env: UNIONSYNC (default
# target/release/unionsync, built if missing).
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: $0 LOWER UPPER MOUNTPOINT" >&2; exit 2; }
lower=$1 upper=$2 mountpoint=$3
here=$(cd "$(dirname "$0")/../.." && pwd)
bin=${UNIONSYNC:-$here/target/release/unionsync}
[ -x "$bin" ] || (cd "$here" && cargo build --release -p unionsync --bin unionsync >&2)
token=$(mktemp)
echo bench-token >"$token"
log=$(mktemp --suffix=.unionsync.log)
# Its own control socket: the previous setup's daemon may still be exiting.
control=$(mktemp -u --suffix=.unionsync.sock)
RUST_LOG=warn "$bin" compute mount --mount "$mountpoint" --lower "$lower" --upper "$upper" \
    --project ws://127.0.0.1:9/ --token-file "$token" --local-only '' --control "$control" \
    >"$log" 2>&1 &
for _ in $(seq 600); do
    mountpoint -q "$mountpoint" && exit 0
    kill -0 $! 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
done
echo "ours_mount.sh: not mounted after 60 s" >&2
exit 1
