#!/usr/bin/env bash
# Mount an sshfs of REMOTE_DIR (on this machine) at MOUNTPOINT, through a
# private sshd on 127.0.0.1:$PORT and, when DELAY > 0, through delay_proxy
# as the ssh ProxyCommand, so every round trip costs 2 × DELAY ms.
#
# Usage (as root): benches/fs/setup_sshfs.sh STATE_DIR REMOTE_DIR MOUNTPOINT
#   env: PORT  (default 2222)  port of the private sshd
#        DELAY (default 10)    one-way delay in ms; 0 = connect directly
#        DELAY_PROXY           path of the delay_proxy binary (default:
#                              target/release/delay_proxy, built if missing)
#        SSHFS_OPTS            extra sshfs -o options (comma separated)
#
# Idempotent: installs sshfs/openssh-server only if missing, reuses the keys
# and the sshd in STATE_DIR if present, and does nothing if MOUNTPOINT is
# already mounted. Undo with benches/fs/teardown_sshfs.sh STATE_DIR.
#
# STATE_DIR gets: throwaway host and user keys, sshd_config, sshd.pid,
# sshd.log, ssh_config (usable as `ssh -F STATE_DIR/ssh_config usbench`)
# and `mounts` (the mountpoints to unmount on teardown).
set -euo pipefail

if [ $# -ne 3 ]; then
    sed -n '2,/^set /{/^set /d;s/^# \{0,1\}//;p}' "$0" >&2
    exit 2
fi
state=$1 remote=$2 mnt=$3
port=${PORT:-2222}
delay=${DELAY:-10}
repo=$(cd "$(dirname "$0")/../.." && pwd)
proxy=${DELAY_PROXY:-$repo/target/release/delay_proxy}

[ "$(id -u)" -eq 0 ] || { echo "setup_sshfs.sh: run as root" >&2; exit 1; }
if ! command -v sshfs >/dev/null || ! [ -x /usr/sbin/sshd ]; then
    apt-get install -y sshfs openssh-server >&2
fi
if [ "$delay" != 0 ] && ! [ -x "$proxy" ]; then
    (cd "$repo" && cargo build --release -p unionsync-benches --bin delay_proxy) >&2
fi

mkdir -p "$state" "$remote" "$mnt"
state=$(cd "$state" && pwd) remote=$(cd "$remote" && pwd) mnt=$(cd "$mnt" && pwd)
mkdir -p /run/sshd # sshd's privilege separation directory

for key in host_key user_key; do
    [ -f "$state/$key" ] || ssh-keygen -q -t ed25519 -N '' -C "usbench-$key" -f "$state/$key"
done

cat >"$state/sshd_config" <<EOF
ListenAddress 127.0.0.1:$port
HostKey $state/host_key
PidFile $state/sshd.pid
AuthorizedKeysFile $state/user_key.pub
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# The key files live under /tmp, which is world writable.
StrictModes no
UseDNS no
PrintMotd no
Subsystem sftp internal-sftp
LogLevel ERROR
EOF

proxy_line="# DELAY=0: direct connection"
if [ "$delay" != 0 ]; then
    proxy_line="ProxyCommand $proxy --stdio --to 127.0.0.1:$port --delay-ms $delay"
fi
cat >"$state/ssh_config" <<EOF
Host usbench
    HostName 127.0.0.1
    Port $port
    User root
    IdentityFile $state/user_key
    IdentitiesOnly yes
    $proxy_line
    BatchMode yes
    Compression no
    ServerAliveInterval 15
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    LogLevel ERROR
EOF

if ! { [ -f "$state/sshd.pid" ] && kill -0 "$(cat "$state/sshd.pid")" 2>/dev/null; }; then
    /usr/sbin/sshd -f "$state/sshd_config" -E "$state/sshd.log"
    for _ in $(seq 50); do
        [ -s "$state/sshd.pid" ] && break
        sleep 0.1
    done
fi

if mountpoint -q "$mnt"; then
    echo "setup_sshfs.sh: $mnt already mounted" >&2
else
    # Options a user tuning sshfs for speed would pick: no compression on a
    # fast link, directory and kernel page caching, keepalive + reconnect.
    opts=reconnect,ServerAliveInterval=15,dir_cache=yes,kernel_cache
    sshfs -F "$state/ssh_config" "usbench:$remote" "$mnt" -o "$opts${SSHFS_OPTS:+,$SSHFS_OPTS}"
fi
grep -qxF "$mnt" "$state/mounts" 2>/dev/null || echo "$mnt" >>"$state/mounts"
echo "setup_sshfs.sh: $remote mounted at $mnt (delay ${delay} ms each way)" >&2
