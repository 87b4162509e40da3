#!/bin/busybox sh
# /init of the satnetem test VM (runs as PID 1 from the initramfs built by netemvm.py).
#
# Its one job: turn the host's read-only root (9p) plus a tmpfs overlay into a root the host's own
# Python, Mininet and packages can run from, run the one command the host asked for there, report its
# exit code on the console and power off. This file is static: everything that varies per run (the
# command, its environment, the shares, the marker nonce) is read as data from /satnetem/, never
# pasted into this script.

export PATH=/bin
/bin/busybox mkdir -p /bin /proc /sys /dev /lower /rw /newroot
/bin/busybox --install -s /bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

NONCE=unknown
read -r NONCE < /satnetem/nonce
MARK="@@satnetem-vm@@ $NONCE"

halt_now() {
    sync
    # The VM's exit status means nothing to the host (it reads the marker), so a hard power-off is fine.
    echo o > /proc/sysrq-trigger
    sleep 5
    poweroff -f
}

die() {
    echo "satnetem-vm: $*"
    echo "$MARK setup-failed"
    halt_now
}

while read -r mod; do
    [ -n "$mod" ] || continue
    insmod "/satnetem/modules/$mod" || die "insmod $mod failed"
done < /satnetem/modules.order

hostname satnetem-vm
ip link set lo up || die "cannot bring lo up"

mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostroot /lower \
    || die "cannot mount the host root over 9p"
mount -t tmpfs -o mode=0755 tmpfs /rw || die "cannot mount tmpfs for the overlay"
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot \
    || die "cannot mount the overlay root"

R=/newroot
mount -t proc proc "$R/proc" || die "cannot mount proc"
mount -t sysfs sysfs "$R/sys" || die "cannot mount sysfs"
mount -t devtmpfs devtmpfs "$R/dev" || die "cannot mount devtmpfs"
mkdir -p "$R/dev/pts" "$R/dev/shm"
# Mininet opens a pty per node: a private devpts instance whose ptmx anyone may open.
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$R/dev/pts" || die "cannot mount devpts"
rm -f "$R/dev/ptmx"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp" || die "cannot mount /tmp"
mount -t tmpfs -o mode=0755 tmpfs "$R/run" || die "cannot mount /run"

# Writable shares of host directories, mounted at the same path as on the host. Lines: TAG<TAB>PATH.
while IFS='	' read -r tag path; do
    [ -n "$tag" ] || continue
    mkdir -p "$R$path"
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 "$tag" "$R$path" \
        || die "cannot mount share $tag at $path"
done < /satnetem/shares

# Modules the kernel asks for later (iptables, bridge, ...) come from the host's own kmod and
# /lib/modules, reached through the new root.
echo /satnetem/modprobe > /proc/sys/kernel/modprobe

mkdir -p "$R/run/satnetem"
cp /satnetem/guest_exec.py /satnetem/job.json "$R/run/satnetem/" || die "cannot stage the job"
read -r PY < /satnetem/python

echo "$MARK ready"
chroot "$R" "$PY" /run/satnetem/guest_exec.py /run/satnetem/job.json
rc=$?
echo "$MARK exit=$rc"
halt_now
