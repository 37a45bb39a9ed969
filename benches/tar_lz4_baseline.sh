#!/usr/bin/env bash
# Baseline for `cargo bench -p unionsync-benches --bench archive`: the same
# two data sets moved disk to disk by GNU tar and the lz4 CLI,
#   tar -C src -cf - . | lz4 -q -c | lz4 -q -dc | tar -C dst -xf -
# with a warm page cache and no fsync. Prints the mean wall time and the
# throughput in file content bytes per second, as MB/s (10^6) and as MiB/s
# (what criterion prints).
#
# Data sets (same shapes as the bench, content from /dev/urandom instead of
# its xorshift): 10,000 files of 4 KiB in 100 dirs (2 KiB random + 2 KiB
# text each), and one 1 GiB file alternating 1 MiB random / 1 MiB text.
#
# Usage: benches/tar_lz4_baseline.sh [runs]   (default 5; uses hyperfine
# when installed; SETS="small" or SETS="big" for one data set). Needs tar,
# lz4, bash; ~2.2 GB free in $TMPDIR.
set -euo pipefail

runs=${1:-5}
sets=${SETS:-small big}
for tool in tar lz4; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

line='the quick brown fox jumps over the lazy dog; 0123456789'
# 2048 bytes ending mid-line, so `$(...)` keeps them all.
# (`yes` dies of SIGPIPE: `|| true` for pipefail.)
text_2k=$(yes "$line" | head -c 2048 || true)
yes "$line" | head -c $((1 << 20)) >"$work/text_1m" || true

make_small() { # 100 dirs of 100 files: 2 KiB random + 2 KiB text each
    mkdir -p "$work/small/src"
    for d in $(seq -w 0 99); do
        mkdir "$work/small/src/d$d"
        head -c $((100 * 2048)) /dev/urandom |
            split -b 2048 -a 3 -d - "$work/small/src/d$d/f"
        for f in "$work/small/src/d$d"/f*; do
            printf '%s' "$text_2k" >>"$f"
        done
    done
}

make_big() { # 1 MiB random, 1 MiB text, ... for 1 GiB
    mkdir -p "$work/big/src"
    for _ in $(seq 512); do
        head -c $((1 << 20)) /dev/urandom
        cat "$work/text_1m"
    done >"$work/big/src/big"
}

pipeline() { # src dst
    tar -C "$1" -cf - . | lz4 -q -c | lz4 -q -dc | tar -C "$2" -xf -
}
export -f pipeline

for set in $sets; do
    echo "making $set..." >&2
    "make_$set"
    bytes=$(find "$work/$set/src" -type f -printf '%s\n' | awk '{ n += $1 } END { print n }')
    src="$work/$set/src"
    # A new destination per run, made and synced untimed. The small set's
    # are all kept: creating 10,000 files right after deleting as many makes
    # ext4 crawl (recently_deleted inode scans); the big one's are removed.
    keep=$([[ $set == small ]] && echo 1 || echo 0)
    if command -v hyperfine >/dev/null; then
        hyperfine --shell bash --runs "$runs" --warmup 1 \
            --prepare "{ [ $keep = 1 ] || rm -rf '$work/$set/dsts'; } &&
                mkdir -p '$work/$set/dsts' && d=\$(mktemp -d -p '$work/$set/dsts') &&
                ln -sfn \"\$d\" '$work/$set/dst' && sync" \
            "pipeline '$src' '$work/$set/dst/'" --export-json "$work/$set.json" >&2
        mean=$(grep -m1 '"mean"' "$work/$set.json" | tr -dc '0-9.')
        dst="$work/$set/dst/"
    else
        total=0
        for i in $(seq 0 "$runs"); do # run 0: warm-up
            [[ $keep == 1 ]] || rm -rf "$work/$set"/dst.*
            dst="$work/$set/dst.$i"
            mkdir "$dst" && sync
            start=$(date +%s.%N)
            pipeline "$src" "$dst"
            end=$(date +%s.%N)
            if ((i > 0)); then
                total=$(awk -v t="$total" -v s="$start" -v e="$end" 'BEGIN { print t + e - s }')
            fi
        done
        mean=$(awk -v t="$total" -v n="$runs" 'BEGIN { print t / n }')
    fi
    diff -r "$src" "$dst" >/dev/null || {
        echo "$set: the destination differs from the source" >&2
        exit 1
    }
    awk -v set="$set" -v bytes="$bytes" -v mean="$mean" -v runs="$runs" 'BEGIN {
        printf "%-6s %12d bytes  mean %.3f s over %d runs  %8.1f MB/s  %8.1f MiB/s\n",
            set, bytes, mean, runs, bytes / mean / 1e6, bytes / mean / 1048576
    }'
done
