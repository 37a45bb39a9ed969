#!/usr/bin/env bash
# What a copy-up costs: N lower files of 4 KiB, each appended to once through
# the union (N copy-ups, each fsynced before its rename), then the
# compile-like workload of workload.sh in the same mount (new files only).
# Prints `name seconds`. As root, from the repository root:
#
#   UNIONSYNC=target/release/unionsync benches/fs/lower_edits.sh [N]
#
# Run it with two builds side by side to compare (the machine is noisy:
# compare ratios from one run).
set -euo pipefail
n=${1:-1000}
here=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
cleanup() {
    fusermount3 -u "$work/mnt" 2>/dev/null || fusermount3 -u -z "$work/mnt" 2>/dev/null || true
    # The daemon ours_mount.sh left in the background.
    pkill -9 -f -- "--mount $work/mnt " 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/lower/edits" "$work/upper" "$work/mnt"
python3 - "$work/lower/edits" "$n" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(os.path.join(d, f"f{i}"), "wb") as f:
        f.write(os.urandom(4096))
PY
"$here/benches/fs/ours_mount.sh" "$work/lower" "$work/upper" "$work/mnt"
start=$(date +%s.%N)
python3 - "$work/mnt/edits" "$n" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(os.path.join(d, f"f{i}"), "ab") as f:
        f.write(b"edited\n")
PY
end=$(date +%s.%N)
echo "lower_edits_$n $(echo "$end - $start" | bc)"
"$here/benches/fs/workload.sh" "$work/mnt" | grep '^compile '
