#!/usr/bin/env bash
# Filesystem workloads, run inside DIR; prints one line per workload:
#   name seconds        (or `name >CAP` if it hit the time cap,
#                        `name error` if it failed, `name skipped` if untar
#                        did not complete, for read_tree and rm_rf)
#
#   compile    one python3 process: 1000 × 4 KiB files created in 10 subdirs,
#              all stat'ed, all read, 200 renamed, all deleted; plus 100
#              mkdir and 100 rmdir
#   untar      tar -xf of a deterministic tarball: 3000 files of 1–16 KiB
#              (~25 MiB) in 150 nested dirs (generated once, see TARBALL)
#   read_tree  read every file of the extracted tree (find | cat), right
#              after untar, so with whatever caches the untar left warm
#   rm_rf      rm -rf the extracted tree
#
# Usage: benches/fs/workload.sh DIR
#   env: CAP     (default 600) per-workload time cap in seconds
#        TARBALL (default /tmp/usbench_tree_v1.tar) where the tarball is
#                cached; created if missing
# Works in DIR/wl_compile and DIR/wl_tree, removed before and after.
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
dir=$(cd "$1" && pwd)
cap=${CAP:-600}
tarball=${TARBALL:-/tmp/usbench_tree_v1.tar}
# The interpreter itself, not a wrapper (a pyenv shim adds ~50 ms of bash).
python=$(python3 -c 'import sys; print(sys.executable)')

# The tarball: fixed seed, mtimes, owners and order, so byte-identical on
# every machine with the same python3 tarfile format.
if ! [ -f "$tarball" ]; then
    "$python" - "$tarball" <<'EOF'
import io, os, random, sys, tarfile
out = sys.argv[1]
rng = random.Random(20240501)
words = [b"fn", b"let", b"mut", b"impl", b"struct", b"self", b"match", b"Some",
         b"None", b"return", b"pub", b"use", b"crate", b"=>", b"{", b"}", b";"]
def info(name, kind, size=0):
    ti = tarfile.TarInfo(name)
    ti.type, ti.size, ti.mtime = kind, size, 1700000000
    ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    return ti
with tarfile.open(out + ".tmp", "w", format=tarfile.GNU_FORMAT) as tar:
    tar.addfile(info("tree", tarfile.DIRTYPE))
    n = 0
    for a in range(30):                 # 30 × 5 = 150 leaf dirs
        tar.addfile(info(f"tree/m{a:02}", tarfile.DIRTYPE))
        for b in range(5):
            d = f"tree/m{a:02}/s{b}"
            tar.addfile(info(d, tarfile.DIRTYPE))
            for _ in range(20):         # 20 files each = 3000 files
                size = rng.randint(1024, 16384)
                data = b" ".join(rng.choice(words) for _ in range(size // 3))
                data = (data + b"\n" * size)[:size]
                tar.addfile(info(f"{d}/f{n:04}.rs", tarfile.REGTYPE, size), io.BytesIO(data))
                n += 1
os.rename(out + ".tmp", out)
EOF
fi

compile_py=$(cat <<'EOF'
import os, sys
root = sys.argv[1]
data = bytes(range(256)) * 16          # 4 KiB
os.mkdir(root)
dirs = [os.path.join(root, f"d{i}") for i in range(10)]
files = []
for d in dirs:
    os.mkdir(d)
    for j in range(100):
        p = os.path.join(d, f"unit{j:03}.c")
        with open(p, "wb") as f:
            f.write(data)
        files.append(p)
for p in files:
    os.stat(p)
for p in files:
    with open(p, "rb") as f:
        assert len(f.read()) == 4096
for k in range(200):                  # 20 per dir
    p = files[k * 5]
    os.rename(p, p[:-2] + ".o")
    files[k * 5] = p[:-2] + ".o"
for p in files:
    os.unlink(p)
for i in range(100):
    os.mkdir(os.path.join(root, f"tmp{i:03}"))
for i in range(100):
    os.rmdir(os.path.join(root, f"tmp{i:03}"))
for d in dirs:
    os.rmdir(d)
os.rmdir(root)
EOF
)

now() { date +%s.%N; }

# On TERM/INT/HUP (e.g. from compare.sh), stop the running workload too:
# `timeout` runs it in a process group of its own and passes the signal on.
child=
trap '[ -n "$child" ] && kill -TERM "$child" 2>/dev/null; exit 143' TERM INT HUP

# run NAME CMD...: time CMD under the cap, print the result line.
run() {
    local name=$1 t0 t1 rc=0
    shift
    t0=$(now)
    # In the background: `wait` returns at once when a trapped signal comes.
    timeout "$cap" "$@" &
    child=$!
    wait "$child" || rc=$?
    child=
    t1=$(now)
    case $rc in
    0) awk -v n="$name" -v a="$t0" -v b="$t1" 'BEGIN { printf "%s %.3f\n", n, b - a }' ;;
    124) echo "$name >$cap" ;;
    *) echo "$name error"; echo "workload.sh: $name failed (exit $rc)" >&2 ;;
    esac
    return "$rc"
}

cd "$dir"
rm -rf wl_compile wl_tree

run compile "$python" -c "$compile_py" "$dir/wl_compile" || true

mkdir wl_tree
untar_ok=1
run untar tar -xf "$tarball" -C wl_tree --no-same-owner || untar_ok=0
if [ "$untar_ok" = 1 ]; then
    run read_tree sh -c 'find wl_tree -type f -exec cat {} + >/dev/null' || true
    run rm_rf rm -rf wl_tree || true
else
    # A partial tree would give meaningless numbers.
    echo "read_tree skipped"
    echo "rm_rf skipped"
fi

# Leave DIR as we found it even after a timeout (uncapped: may be slow).
rm -rf wl_compile wl_tree
