#!/usr/bin/env bash
# Boot a real systemd as PID 1 (its own PID, mount, cgroup, UTS and IPC namespaces) on a
# throw-away overlay of this machine's root, install lucidd's units there exactly as README's
# "Install as a service" says, and exercise them with every hardening option on: socket
# activation by a client in group lucidd, a file put and finalized, the root read, status and
# watchdog, the keyring from an encrypted credential, a crash and restart, a clean stop.
#
# Not run by CI (it needs root and takes a minute or two). Usage, as root, from anywhere:
#     systemd/pid1-check.sh            # everything it writes lives in a tmpfs; nothing leaks
# Needs: systemd (the package), util-linux (unshare, nsenter, pivot_root), overlayfs,
# /usr/bin/python3 with venv, and network access to PyPI for `pip install`.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [[ "${1:-}" != --inside ]]; then
    [[ $(id -u) == 0 ]] || { echo "pid1-check: run as root" >&2; exit 2; }
    # A private mount namespace: the overlay and every mount below disappear with us.
    exec unshare --mount --propagation private -- "$0" --inside
fi

BASE=$(mktemp -d /tmp/lucidd-pid1.XXXXXX)
mount -t tmpfs -o mode=0755 lucidd-pid1 "$BASE"
mkdir "$BASE"/{upper,work,root}
mount -t overlay overlay -o "lowerdir=/,upperdir=$BASE/upper,workdir=$BASE/work" "$BASE/root"
ROOT=$BASE/root

# The cgroup2 hierarchy: a pure one at /sys/fs/cgroup, or the "unified" one of a hybrid host.
if [[ $(stat -fc %T /sys/fs/cgroup) == cgroup2fs ]]; then CGROUP=/sys/fs/cgroup
else CGROUP=/sys/fs/cgroup/unified; fi
CG="$CGROUP/$(basename "$BASE")"
mkdir "$CG"

PID1=
cleanup() {
    if [[ -n "$PID1" ]] && kill -0 "$PID1" 2>/dev/null; then
        kill -s SIGRTMIN+4 "$PID1" 2>/dev/null || true # poweroff
        for _ in $(seq 60); do kill -0 "$PID1" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$PID1" 2>/dev/null || true
    fi
    sleep 0.5
    find "$CG" -depth -type d -exec rmdir {} + 2>/dev/null || true
    umount -R -l "$BASE" 2>/dev/null && rmdir "$BASE"
}
trap cleanup EXIT

step() { printf '\n### %s\n' "$*"; }

# -- install, as README says (in a chroot of the overlay) ------------------------------------
in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"; }
mount -t proc proc "$ROOT/proc"
mount --rbind /dev "$ROOT/dev"
mount -t tmpfs tmpfs "$ROOT/run"
# A copy of the source tree (pip builds in it; the checkout stays untouched).
mkdir -p "$ROOT/src"
if git -C "$REPO" rev-parse 2>/dev/null; then
    git -C "$REPO" ls-files -z --cached --others --exclude-standard |
        tar -C "$REPO" --null --ignore-failed-read -T - -cf - | tar -C "$ROOT/src" -xf -
else
    cp -a "$REPO/." "$ROOT/src/"
fi

step "install lucidd into /opt/lucidd (system python, venv)"
in_root /usr/bin/python3 -m venv /opt/lucidd
in_root /opt/lucidd/bin/pip install -q --no-cache-dir /src
step "install units, sysusers.d, tmpfiles.d"
install -m 0644 "$REPO"/systemd/lucidd.service "$REPO"/systemd/lucidd.socket \
    "$REPO"/systemd/lucidd-control.socket "$ROOT/etc/systemd/system/"
install -D -m 0644 "$REPO/systemd/lucidd.sysusers.conf" "$ROOT/usr/lib/sysusers.d/lucidd.conf"
install -D -m 0644 "$REPO/systemd/lucidd.tmpfiles.conf" "$ROOT/usr/lib/tmpfiles.d/lucidd.conf"
install -D -m 0644 "$REPO/systemd/lucidd.toml" "$ROOT/etc/lucidd/lucidd.toml"
in_root systemd-sysusers lucidd.conf
in_root useradd --create-home --groups lucidd alice # a client: member of group lucidd
in_root useradd --create-home mallory               # not a member
step "keyring as an encrypted credential (host key: no TPM here)"
in_root mkdir -p -m 0700 /etc/credstore.encrypted
in_root /bin/sh -c '/opt/lucidd/bin/lucidd keygen | systemd-creds encrypt --with-key=host \
    --name=lucidd.keyring - /etc/credstore.encrypted/lucidd.keyring'
ls -l "$ROOT/etc/credstore.encrypted"
in_root systemctl enable lucidd.socket lucidd-control.socket
# What this check boots into: the socket units and nothing else of multi-user.target.
cat >"$ROOT/etc/systemd/system/lucidd-check.target" <<'EOF'
[Unit]
Description=lucidd PID 1 check
Requires=sysinit.target sockets.target
After=sysinit.target sockets.target
AllowIsolate=yes
EOF
head -c 3000000 /dev/urandom >"$ROOT/home/alice/recording.bin"
in_root chown alice: /home/alice/recording.bin
umount "$ROOT/run" "$ROOT/proc"
umount -R "$ROOT/dev"

# -- boot -----------------------------------------------------------------------------------
step "boot systemd as PID 1"
cat >"$BASE/boot.sh" <<EOF
#!/bin/bash
set -e
cd "$ROOT"
mount -t proc proc proc
mount --rbind /sys sys
umount -R sys/fs/cgroup
mount -t cgroup2 cgroup2 sys/fs/cgroup
mount -t tmpfs -o mode=0755,nosuid tmpfs dev
for n in null zero full random urandom tty; do touch dev/\$n; mount --bind /dev/\$n dev/\$n; done
mkdir dev/pts dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts dev/pts
ln -s pts/ptmx dev/ptmx
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs dev/shm
touch dev/console; mount --bind "$BASE/console" dev/console
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs tmp
mkdir -p oldroot
pivot_root . oldroot
umount -l /oldroot
# What systemd does itself when the kernel starts it, and leaves to a container manager: shared
# propagation, without which credentials mounted for a service never reach its namespace.
mount --make-rshared /
exec /usr/bin/env -i container=lucidd-pid1-check /lib/systemd/systemd --unit=lucidd-check.target
EOF
chmod +x "$BASE/boot.sh"
: >"$BASE/console"
bash -c "echo \$\$ >'$CG/cgroup.procs'; exec unshare --pid --fork --uts --ipc --cgroup --mount \
    --propagation private '$BASE/boot.sh'" </dev/null &>"$BASE/boot.log" &
for _ in $(seq 100); do
    PID1=$(pgrep -P $! -x systemd || true)
    [[ -n "$PID1" ]] && break
    sleep 0.1
done
[[ -n "$PID1" ]] || { cat "$BASE/boot.log" "$BASE/console"; exit 1; }
inside() { nsenter -t "$PID1" -m -u -i -p -C -r -w /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
as_alice() { inside runuser -u alice -- env HOME=/home/alice LUCIDD_RUNTIME_DIR=/run/lucidd "$@"; }
for _ in $(seq 120); do
    state=$(inside systemctl is-system-running 2>/dev/null || true)
    [[ "$state" == running || "$state" == degraded ]] && break
    sleep 0.5
done
echo "system: $state (PID 1 is host pid $PID1)"
if [[ "$state" == degraded ]]; then inside systemctl --failed --no-pager || true; fi

# -- the checks -----------------------------------------------------------------------------
journal() { inside journalctl --no-pager -n 80 -u lucidd -u lucidd.socket -u lucidd-control.socket || true; }
fail() { echo "FAIL: $*" >&2; journal; exit 1; }
trap 'echo "FAIL: line $LINENO" >&2; journal; debug_pause' ERR
# LUCIDD_PID1_DEBUG=SECONDS keeps a failed system up that long: nsenter -a -t PID1 to look.
debug_pause() { sleep "${LUCIDD_PID1_DEBUG:-0}"; }

step "sockets listen, the service has not started"
inside systemctl --no-pager status lucidd.socket lucidd-control.socket | grep -E "Listen|Active" || true
inside ls -ld /run/lucidd /run/lucidd/data.sock /run/lucidd/control.sock
[[ $(inside systemctl is-active lucidd.service) == inactive ]] || fail "lucidd.service started early"

step "a client outside group lucidd is refused"
if inside runuser -u mallory -- env LUCIDD_RUNTIME_DIR=/run/lucidd /opt/lucidd/bin/lucidctl health;
then fail "mallory reached the control socket"; fi

step "another user's live lucidd ring in /dev/shm is left alone (ProtectProc=noaccess)"
inside systemd-run -q --uid=mallory --unit=mallory-lucidd sleep 600
other=$(inside systemctl show -p MainPID --value mallory-lucidd.service)
inside runuser -u mallory -- truncate -s 8192 "/dev/shm/lucidd-$other-ring"

step "alice (group lucidd) activates the service: put a 3 MB file, finalize"
put=$(as_alice /opt/lucidd/bin/lucidctl --json put /home/alice/recording.bin --chunk-size 256KiB --finalize)
echo "$put"
session=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["session"])' "$put")
inside systemctl --no-pager status lucidd.service | head -n 30
[[ $(inside systemctl is-active lucidd.service) == active ]] || fail "lucidd.service not active"

inside test -e "/dev/shm/lucidd-$other-ring" || fail "the service removed a live ring of another user"
inside rm "/dev/shm/lucidd-$other-ring"

step "root read, health, status text, watchdog"
as_alice /opt/lucidd/bin/lucidctl --json root "$session"
as_alice /opt/lucidd/bin/lucidctl health
inside systemctl show lucidd.service -p Type -p NotifyAccess -p MainPID -p StatusText \
    -p WatchdogUSec -p WatchdogTimestamp -p TasksCurrent -p NRestarts
sleep 2
inside systemctl show lucidd.service -p StatusText -p WatchdogTimestamp

step "the keyring came from the credential (no keyring file in the state folder)"
inside ls -la /var/lib/lucidd
if inside test -e /var/lib/lucidd/keys/keyring; then fail "daemon created its own keyring"; fi

step "shared memory ring, processes, sandbox as seen from the service"
main=$(inside systemctl show -p MainPID --value lucidd.service)
inside ls -l /dev/shm
inside grep -E "^(Uid|Gid|NoNewPrivs|Seccomp|CapBnd|CapEff)" "/proc/$main/status"
inside systemd-cgls --no-pager -u lucidd.service

step "journald priorities (PRIORITY, MESSAGE)"
inside journalctl -u lucidd -o json --no-pager |
    python3 -c 'import json,sys
for line in sys.stdin:
    e = json.loads(line)
    if e.get("_PID") != "1" and "MESSAGE" in e: print(e.get("PRIORITY"), e["MESSAGE"])' | head -n 20

step "systemd-analyze security (online, running manager)"
inside systemd-analyze security --no-pager lucidd.service | tail -n 4

step "crash: SIGKILL the supervisor; systemd restarts it on the same sockets"
inside systemctl kill -s KILL --kill-who=main lucidd.service
for _ in $(seq 60); do
    [[ $(inside systemctl show -p NRestarts --value lucidd.service) -ge 1 &&
        $(inside systemctl is-active lucidd.service) == active ]] && break
    sleep 0.5
done
inside systemctl show lucidd.service -p NRestarts -p ActiveState -p MainPID
inside ls /dev/shm # the dead supervisor's ring is gone: the new one removed it at start
as_alice /opt/lucidd/bin/lucidctl --json root "$session"

step "watchdog: a frozen supervisor misses its pings; systemd aborts and restarts it"
inside mkdir -p /run/systemd/system/lucidd.service.d
printf '[Service]\nWatchdogSec=3s\nTimeoutAbortSec=2s\n' |
    inside tee /run/systemd/system/lucidd.service.d/50-check.conf >/dev/null
inside systemctl daemon-reload
inside systemctl restart lucidd.service
restarts=$(inside systemctl show -p NRestarts --value lucidd.service)
inside systemctl kill -s STOP --kill-who=main lucidd.service
for _ in $(seq 60); do
    [[ $(inside systemctl show -p NRestarts --value lucidd.service) -gt $restarts &&
        $(inside systemctl is-active lucidd.service) == active ]] && break
    sleep 0.5
done
inside journalctl -u lucidd --no-pager -o cat | grep -E "Watchdog timeout|Killing process .* SIGABRT|Scheduled restart" |
    tail -n 3 || fail "no watchdog timeout"
inside systemctl show lucidd.service -p NRestarts -p ActiveState
as_alice /opt/lucidd/bin/lucidctl --json root "$session"
inside rm -r /run/systemd/system/lucidd.service.d
inside systemctl daemon-reload

step "stop: STOPPING=1, drain, exit 0; the socket files stay and re-activate"
inside systemctl stop lucidd.service
inside systemctl show lucidd.service -p Result -p ExecMainStatus -p ActiveState
[[ $(inside systemctl show -p ExecMainStatus --value lucidd.service) == 0 ]] || fail "exit status"
inside ls -l /run/lucidd
as_alice /opt/lucidd/bin/lucidctl --json root "$session"
inside journalctl -u lucidd --no-pager -n 12 -o cat

step "without its credential the service refuses to start (and makes no keyring of its own)"
inside systemctl stop lucidd.service
inside mv /etc/credstore.encrypted/lucidd.keyring /root/lucidd.keyring.cred
if inside timeout 60 systemctl start lucidd.service; then fail "started without its keyring"; fi
inside journalctl -u lucidd --no-pager -n 4 -o cat
if inside test -e /var/lib/lucidd/keys/keyring; then fail "daemon created its own keyring"; fi
inside mv /root/lucidd.keyring.cred /etc/credstore.encrypted/lucidd.keyring
inside systemctl reset-failed lucidd.service lucidd.socket lucidd-control.socket
inside systemctl start lucidd.socket lucidd-control.socket
as_alice /opt/lucidd/bin/lucidctl --json root "$session"
inside systemctl stop lucidd.service lucidd.socket lucidd-control.socket

step "PASS"
