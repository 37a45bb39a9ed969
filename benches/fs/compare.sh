#!/usr/bin/env bash
# Runs benches/fs/workload.sh on several setups and prints a markdown table
# (rows = workloads, columns = setups, cells = seconds). Run as root.
#
#   local           plain dir on a local ext4
#   sshfs           sshfs of a local dir through a private sshd and
#                   delay_proxy: DELAY ms each way (default 10)
#   unionfs-local   unionfs-fuse -o cow, RW upper and RO lower both local
#   unionfs-sshfs   unionfs-fuse -o cow, local upper, lower = the sshfs mount
#   ours-local      $UNION_MOUNT_CMD LOWER UPPER MOUNTPOINT, lower local
#   ours-sshfs      $UNION_MOUNT_CMD LOWER UPPER MOUNTPOINT, lower = sshfs
#
# The lowers start empty: every workload creates its own files, so a union
# sees its lower only through lookups (which, over sshfs, are round trips).
#
# UNION_MOUNT_CMD (the ours-* setups run only when it is set) is a shell
# command to which LOWER UPPER MOUNTPOINT are appended, e.g.
#   UNION_MOUNT_CMD='target/release/unionsync compute mount'
# It may stay in the foreground or daemonize; the mount counts as up once
# MOUNTPOINT is a mountpoint (within 60 s). It is unmounted with fusermount3
# -u (or umount -l) and, if still running, sent SIGTERM.
#
# env: SETUPS   subset of the setups above, in order (default: all that apply)
#      CAP      per-workload time cap in seconds (default 600); a capped
#               workload shows as >CAP
#      DELAY    one-way delay of the sshfs link in ms (default 10)
#      PORT     port of the private sshd (default 2222)
#      SCRATCH  `fresh` (default): every setup gets its own freshly made ext4
#               (a sparse 2 GiB image on the local disk, loop mounted), so
#               one run's deletions cannot slow the next (ext4 skips inodes
#               deleted in the last 5+ minutes when allocating, which made
#               untar 30× slower on a busy /tmp); `plain`: dirs under $TMPDIR
#      UNIONFS_OPTS  extra unionfs-fuse -o options
#
# Everything is mounted under a fresh /tmp/usbench.XXXXXX and torn down by
# an EXIT trap, also on failure or ^C. Progress goes to stderr, the table
# to stdout; raw workload.sh output is kept in the state dir if KEEP=1.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cap=${CAP:-600}
delay=${DELAY:-10}
scratch_kind=${SCRATCH:-fresh}
[ "$(id -u)" -eq 0 ] || { echo "compare.sh: run as root" >&2; exit 1; }

default_setups="local unionfs-local"
[ -n "${UNION_MOUNT_CMD:-}" ] && default_setups+=" ours-local"
default_setups+=" sshfs unionfs-sshfs"
[ -n "${UNION_MOUNT_CMD:-}" ] && default_setups+=" ours-sshfs"
read -r -a setups <<<"${SETUPS:-$default_setups}"
for s in "${setups[@]}"; do
    case $s in
    local | sshfs | unionfs-local | unionfs-sshfs) ;;
    ours-local | ours-sshfs)
        [ -n "${UNION_MOUNT_CMD:-}" ] || { echo "compare.sh: $s needs UNION_MOUNT_CMD" >&2; exit 2; }
        ;;
    *) echo "compare.sh: unknown setup $s" >&2; exit 2 ;;
    esac
done

if [[ " ${setups[*]} " == *" unionfs-"* ]] && ! command -v unionfs >/dev/null; then
    echo "compare.sh: installing unionfs-fuse" >&2
    apt-get install -y unionfs-fuse >&2 || echo "compare.sh: unionfs-fuse unavailable" >&2
fi

state=$(mktemp -d /tmp/usbench.XXXXXX)
log() { echo "compare.sh: $*" >&2; }

# Undo stack: shell commands run in reverse order by undo_pop / at exit.
undo=()
undo_push() { undo+=("$1"); }
undo_pop() {
    local n=$((${#undo[@]} - 1))
    eval "${undo[n]}" || true
    unset "undo[n]"
}
wl= # pid of the running workload.sh (under its backstop timeout)
cleanup() {
    set +e
    if [ -n "$wl" ]; then
        log "stopping workload.sh"
        kill -TERM "$wl" 2>/dev/null
        wait "$wl" 2>/dev/null
    fi
    while [ ${#undo[@]} -gt 0 ]; do undo_pop; done
    if [ "${KEEP:-0}" = 1 ]; then log "kept $state"; else rm -rf "$state"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

unmount() {
    mountpoint -q "$1" || return 0
    fusermount3 -u "$1" 2>/dev/null || umount "$1" 2>/dev/null || umount -l "$1"
}

# scratch NAME: makes a new empty local dir for one setup, in $sdir.
# (Functions that push undo steps set globals: a $(...) subshell would
# lose the pushes.)
scratch() {
    sdir=$state/$1
    mkdir -p "$sdir" || return 1
    if [ "$scratch_kind" = fresh ]; then
        truncate -s 2G "$state/$1.img" && mkfs.ext4 -q -F "$state/$1.img" || return 1
        mount -o loop "$state/$1.img" "$sdir" || return 1
        undo_push "umount '$sdir' 2>/dev/null || umount -l '$sdir'; rm -f '$state/$1.img'"
    fi
}

sshfs_mnt=$state/sshfs
sshfs_up=0
need_sshfs() {
    [ "$sshfs_up" = 1 ] && return 0
    scratch sshfs-remote
    undo_push "'$here/teardown_sshfs.sh' '$state/ssh'"
    DELAY=$delay "$here/setup_sshfs.sh" "$state/ssh" "$sdir/export" "$sshfs_mnt" >&2 || return 1
    sshfs_up=1
}

mount_unionfs() { # LOWER UPPER MNT
    command -v unionfs >/dev/null || { log "no unionfs-fuse"; return 1; }
    mkdir -p "$3"
    unionfs -o "cow${UNIONFS_OPTS:+,$UNIONFS_OPTS}" "$2=RW:$1=RO" "$3" || return 1
    undo_push "unmount '$3'"
}

mount_ours() { # LOWER UPPER MNT
    mkdir -p "$3"
    setsid bash -c "$UNION_MOUNT_CMD \"\$@\"" union-mount "$1" "$2" "$3" \
        >"$state/ours.log" 2>&1 &
    local pid=$!
    undo_push "unmount '$3'; kill $pid 2>/dev/null; sleep 1; kill -9 $pid 2>/dev/null"
    for _ in $(seq 600); do
        mountpoint -q "$3" && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" || { log "UNION_MOUNT_CMD failed:"; cat "$state/ours.log" >&2; return 1; }
        fi
        sleep 0.1
    done
    log "UNION_MOUNT_CMD: $3 not mounted after 60 s"
    cat "$state/ours.log" >&2
    return 1
}

# prepare SETUP: mounts what SETUP needs, sets $dir to the dir to run in.
# (Called as an `if` condition, where set -e is off: hence the `|| return`.)
prepare() {
    case $1 in
    local) scratch local && dir=$sdir ;;
    sshfs) need_sshfs && dir=$sshfs_mnt ;;
    unionfs-local | ours-local)
        scratch "$1" || return 1
        mkdir "$sdir/lower" "$sdir/upper" || return 1
        "mount_${1%-local}" "$sdir/lower" "$sdir/upper" "$state/$1.mnt" && dir=$state/$1.mnt
        ;;
    unionfs-sshfs | ours-sshfs)
        need_sshfs || return 1
        scratch "$1" || return 1
        mkdir "$sdir/upper" || return 1
        "mount_${1%-sshfs}" "$sshfs_mnt" "$sdir/upper" "$state/$1.mnt" && dir=$state/$1.mnt
        ;;
    *) return 1 ;;
    esac
}

title() {
    case $1 in
    local) echo "local ext4" ;;
    sshfs) echo "sshfs (${delay} ms)" ;;
    unionfs-local) echo "unionfs-fuse, lower local" ;;
    unionfs-sshfs) echo "unionfs-fuse, lower sshfs" ;;
    ours-local) echo "UNION_MOUNT_CMD, lower local" ;;
    ours-sshfs) echo "UNION_MOUNT_CMD, lower sshfs" ;;
    esac
}

workloads=(compile untar read_tree rm_rf)
declare -A cell
t_start=$(date +%s)
for s in "${setups[@]}"; do
    n_undo=${#undo[@]}
    log "=== $s"
    dir=
    if ! prepare "$s" || [ -z "$dir" ]; then
        for w in "${workloads[@]}"; do cell[$s,$w]="mount failed"; done
        continue
    fi
    # Backstop over the per-workload caps (a hung mount must not hang us).
    # In the background with `wait`, so that a signal runs the traps now
    # rather than after the workload; tail streams its lines to stderr.
    timeout $((4 * cap + 600)) env CAP="$cap" "$here/workload.sh" "$dir" >"$state/$s.out" &
    wl=$!
    tail -n +1 -f --pid="$wl" "$state/$s.out" >&2 &
    tl=$!
    rc=0
    wait "$wl" || rc=$?
    wl=
    wait "$tl" || true
    [ "$rc" = 0 ] || log "$s: workload.sh exit $rc"
    while read -r w t; do cell[$s,$w]=$t; done <"$state/$s.out"
    # Unmount this setup's own mounts (keeps the shared sshfs mount).
    if [ "$s" = sshfs ]; then n_undo=${#undo[@]}; fi
    while [ ${#undo[@]} -gt "$n_undo" ]; do undo_pop; done
done
elapsed=$(($(date +%s) - t_start))

# The table.
header="| workload |" rule="|---|"
for s in "${setups[@]}"; do header+=" $(title "$s") |"; rule+="---:|"; done
echo "$header"
echo "$rule"
for w in "${workloads[@]}" total; do
    row="| $w |"
    for s in "${setups[@]}"; do
        if [ "$w" = total ]; then
            v=$(for x in "${workloads[@]}"; do echo "${cell[$s,$x]:-?}"; done |
                awk '/^[0-9.]+$/ { t += $1; next } { bad = 1 } END { printf bad ? "n/a" : "%.2f", t }')
        else
            v=${cell[$s,$w]:-?}
        fi
        row+=" $v |"
    done
    echo "$row"
done
log "all setups took ${elapsed} s (CAP=$cap, DELAY=$delay ms, SCRATCH=$scratch_kind)"
