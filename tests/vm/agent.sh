#!/bin/bash
# The guest's PID 1 after the initramfs: the host's file system is the read-only root; give the
# guest writable /etc, /tmp, /var and /root (overlays) and /run (empty), the modules of its own kernel, and the
# shared directory; then serve commands on the second serial port.
#
# Protocol (one line each way): the host sends `ID BASE64(script)`; the guest runs the script with
# bash (stdin /dev/null, stdout and stderr to files, so a daemon the script leaves running holds
# nothing open) and answers `ID STATUS BASE64(stdout) BASE64(stderr)`. `ID poweroff` ends the guest.
export PATH=/run/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mkdir -p /run/lock
# Writable copies of the host's directories: reads see the host's files (the project may be
# checked out under /tmp or /root), writes stay in the guest.
for d in /etc /tmp /root /var; do
    mkdir -p "/run/overlay$d/upper" "/run/overlay$d/work"
    mount -t overlay overlay -o "lowerdir=$d,upperdir=/run/overlay$d/upper,workdir=/run/overlay$d/work" "$d"
done
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
# The guest kernel's modules, for explicit loads and for the kernel's own requests.
mkdir -p /run/kernel && mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose kernel /run/kernel
mkdir -p /run/bin && printf '#!/bin/sh\nexec /usr/sbin/modprobe -d /run/kernel "$@"\n' > /run/bin/modprobe && chmod +x /run/bin/modprobe
echo /run/bin/modprobe > /proc/sys/kernel/modprobe
# The directory shared with the host, at the path it has there.
mount -t 9p -o trans=virtio,version=9p2000.L,rw shared "$shared"
hostname "$guest"
ip link set lo up
sysctl -qw kernel.printk="4 4 1 7"

exec 3<>/dev/ttyS1
stty -F /dev/ttyS1 raw -echo
echo READY >&3
while IFS=' ' read -r id script <&3; do
    if [ "$script" = poweroff ]; then
        sync
        echo o > /proc/sysrq-trigger
        sleep 10
    fi
    echo "$script" | base64 -d > /run/cmd.sh
    bash /run/cmd.sh < /dev/null > /run/cmd.out 2> /run/cmd.err
    rc=$?
    echo "$id $rc $(base64 -w0 < /run/cmd.out) $(base64 -w0 < /run/cmd.err)" >&3
done
