#!/bin/sh
# PID 1 of a kernel-test VM (`cargo xtask test --kernel V`): the Debian kernel under test
# boots with the machine's own root filesystem, shared read-only over 9p, and runs the
# command given after `--` on the kernel command line chrooted into it. Its output reaches
# the host on the serial console; `KTEST-INIT` lines report this script's own trouble and
# the command's exit status. The VM powers off at the end, whatever happened.
/bin/busybox --install -s
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

fail() {
    echo "KTEST-INIT FAIL $*"
    poweroff -f
}

# virtio-pci and 9p as modules, in dependency order (build-kernel-vm wrote the order).
for m in $(cat /lib/modules/load-order); do
    insmod "/lib/modules/$m.ko" || echo "KTEST-INIT insmod $m failed"
done

# The host's root, read-only, under a tmpfs overlay: the tests write where they like (/run,
# /lib/modules, ...) and the host's files never change.
mkdir -p /host /rw /newroot
# The 9p device appears once virtio-pci has probed it: retry the mount (bounded).
n=0
until mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /host 2>/dev/null; do
    n=$((n + 1))
    [ $n -gt 300 ] && fail "cannot mount the host's root over 9p"
    usleep 10000
done
mount -t tmpfs tmpfs /rw || fail "no tmpfs for the overlay"
mkdir -p /rw/upper /rw/work
R=/newroot
mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work $R \
    || fail "cannot mount the overlay root"
mount -t tmpfs -o mode=755 tmpfs $R/run || fail "no tmpfs on /run"
# /tmp stays the overlay's: a checkout under /tmp (a CI clone) must stay visible.
# The kernel's own modules where modprobe (the host's kmod) looks for them.
mkdir -p "$R/lib/modules/$(uname -r)"
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose kmod "$R/lib/modules/$(uname -r)" \
    || fail "cannot mount the kernel's modules"
# The kernel loads modules on demand (veth, nf_tables, ...) by running its modprobe helper
# from this initramfs, not from the chroot: point it at the host's kmod inside the chroot.
printf '#!/bin/sh\nexec chroot %s /sbin/modprobe "$@"\n' $R > /modprobe-host
chmod 755 /modprobe-host
echo /modprobe-host > /proc/sys/kernel/modprobe || fail "cannot set the modprobe helper"
mount -t proc proc $R/proc || fail "no /proc"
mount -t sysfs sysfs $R/sys || fail "no /sys"
mount -t devtmpfs devtmpfs $R/dev || fail "no /dev"
mkdir -p $R/dev/pts 2>/dev/null
mount -t devpts devpts $R/dev/pts 2>/dev/null
mount -t bpf bpf $R/sys/fs/bpf 2>/dev/null
mount -t tracefs tracefs $R/sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup 2>/dev/null
# A loopback for whatever binds 127.0.0.1 in the root namespace of the VM.
ip link set lo up

[ $# -gt 0 ] || fail "no command after -- on the kernel command line"
echo "KTEST-INIT start $(uname -r)"
HOME=/tmp chroot $R "$@"
echo "KTEST-INIT exit $?"
poweroff -f
