#!/usr/bin/env bash
# Undo benches/fs/setup_sshfs.sh: unmount every sshfs it mounted with this
# STATE_DIR and stop its private sshd. Safe to run twice. Leaves the keys
# and logs; `rm -rf STATE_DIR` afterwards if you like.
#
# Usage: benches/fs/teardown_sshfs.sh STATE_DIR
set -uo pipefail

[ $# -eq 1 ] || { echo "usage: $0 STATE_DIR" >&2; exit 2; }
state=$1

if [ -f "$state/mounts" ]; then
    while read -r mnt; do
        if mountpoint -q "$mnt"; then
            fusermount3 -u "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null ||
                echo "teardown_sshfs.sh: could not unmount $mnt" >&2
        fi
    done <"$state/mounts"
    rm -f "$state/mounts"
fi

if [ -f "$state/sshd.pid" ]; then
    pid=$(cat "$state/sshd.pid")
    # Only the listener: sshd session children exit once their client is gone.
    if kill -0 "$pid" 2>/dev/null && grep -q sshd "/proc/$pid/comm" 2>/dev/null; then
        kill "$pid"
    fi
    rm -f "$state/sshd.pid"
fi
