#!/bin/sh
# PID 1 of the lab's QEMU guest: a Firecracker-like guest whose "envd" answers on one port.
# lab-vmm passes the network on the kernel command line (lab.ip=A/P lab.gw=G lab.port=N)
# and talks to this script over the serial console: it reads `listener off|on` lines and
# acknowledges each with a `LAB-ACK ...` line once the port really changed state.
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

fail() { echo "LAB-GUEST-ERROR $*"; }

# The cloud kernel builds virtio-pci and virtio-net as modules; build-guest wrote them
# in dependency order.
for m in $(cat /lib/modules/load-order); do
    insmod "/lib/modules/$m.ko" || fail "insmod $m failed"
done

for arg in $(cat /proc/cmdline); do
    case "$arg" in
        lab.ip=*) IP="${arg#lab.ip=}" ;;
        lab.gw=*) GW="${arg#lab.gw=}" ;;
        lab.port=*) PORT="${arg#lab.port=}" ;;
    esac
done

# virtio-net probes asynchronously after insmod: wait (bounded) for eth0 to appear.
n=0
until [ -e /sys/class/net/eth0 ]; do
    n=$((n + 1))
    [ $n -gt 500 ] && { fail "no eth0"; break; }
    usleep 10000
done
ip link set lo up
ip link set eth0 up
ip addr add "$IP" dev eth0 || fail "cannot set address $IP"
ip route add default via "$GW" || fail "cannot add default route via $GW"

listening() { netstat -ltn | grep -q ":$PORT "; }

# Waits (bounded) until the port is (1) or is not (0) listening, so READY and the acks
# tell the truth.
await_listening() {
    n=0
    while :; do
        if listening; then [ "$1" = 1 ] && return 0; else [ "$1" = 0 ] && return 0; fi
        n=$((n + 1))
        [ $n -gt 500 ] && { fail "port $PORT did not change state"; return 1; }
        usleep 10000
    done
}

LISTENER=
start_listener() {
    # nc -ll forks one /handler.sh per connection and keeps listening.
    nc -ll -p "$PORT" -e /handler.sh &
    LISTENER=$!
    await_listening 1
}
stop_listener() {
    if [ -n "$LISTENER" ]; then
        kill "$LISTENER"
        wait "$LISTENER" 2>/dev/null
    fi
    LISTENER=
    await_listening 0
}

start_listener
stty -echo 2>/dev/null
echo "LAB-GUEST-READY (guest uptime $(cut -d" " -f1 /proc/uptime) s)"
while read -r cmd; do
    case "$cmd" in
        "listener off") stop_listener; echo "LAB-ACK listener=off" ;;
        "listener on") [ -z "$LISTENER" ] && start_listener; echo "LAB-ACK listener=on" ;;
        "") ;;
        *) echo "LAB-ACK err unknown command: $cmd" ;;
    esac
done
fail "console closed"
poweroff -f
