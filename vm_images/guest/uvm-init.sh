#!/bin/sh
# PID 1 of the uvmexec guest (dash: starts in milliseconds, where a Python
# PID 1 would cost 1-1.5 s under TCG). It mounts the API filesystems, starts
# the agent first (its Python start is the longest step of the boot), then
# the network, sshd and qemu-guest-agent, and then reaps orphans forever.
# There is no udev: the NIC is eth0 and virtio-serial ports are looked up in
# sysfs.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8
umask 022
bb=@GUEST_BUSYBOX@

say() { echo "uvm-init: $*" >/dev/console; }

# busybox applets throughout: a static exec costs a third of a dynamically
# linked one under TCG, and these run before the agent can start.
$bb mount -t proc -o nosuid,nodev,noexec proc /proc
$bb mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
$bb mkdir -p /dev/pts /dev/shm
$bb mount -t devpts -o nosuid,noexec,gid=5,mode=620,ptmxmode=666 devpts /dev/pts
$bb mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /dev/shm
$bb mount -t tmpfs -o nosuid,nodev,mode=755 tmpfs /run
$bb mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
$bb ip link set lo up
# runc (tasks) needs the unified cgroup hierarchy.
$bb mount -t cgroup2 -o nosuid,nodev,noexec none /sys/fs/cgroup

# The host's share for this VM (virtio-9p): task bundles are placed there by the
# host, rootfs already mounted, and runc runs on them here. Mounted before the
# agent starts, so a task can be created as soon as the agent answers.
$bb mkdir -p @GUEST_SHARE_DIR@
$bb mount -t 9p -o trans=virtio,version=9p2000.L,msize=@SHARE_MSIZE@,cache=none \
	@SHARE_MOUNT_TAG@ @GUEST_SHARE_DIR@ \
	|| say "no share @SHARE_MOUNT_TAG@ over virtio-9p: tasks cannot be created"

# This boot's keys (agent and sshd secrets, the authorised client keys), made
# by the launcher and handed in by QEMU as a fw_cfg file: the image holds none.
# They live on a tmpfs only root can enter.
$bb mount -t tmpfs -o nosuid,nodev,noexec,mode=700,size=1m tmpfs @GUEST_KEY_DIR@
$bb tar -x -f /sys/firmware/qemu_fw_cfg/by_name/@KEYS_FW_CFG_NAME@/raw -C @GUEST_KEY_DIR@ \
	|| say "no keys for this boot in fw_cfg @KEYS_FW_CFG_NAME@: the agent and sshd cannot start"

# The agent binds every guest address, loopback included (the SSH path
# reaches it on 127.0.0.1), so it need not wait for eth0.
cd /
# A background job of a non-interactive shell ignores SIGINT and SIGQUIT; the agent
# resets every signal for each process it starts anyway, but starting it clean keeps
# its spawns on the fast (vfork) path.
PYTHONPATH=@GUEST_PROJECT_DIR@ /usr/bin/env --default-signal @AGENT_COMMAND@ </dev/null >/dev/console 2>&1 &
agent_pid=$!

$bb ln -sf /proc/self/fd /dev/fd
$bb ln -sf /proc/self/fd/0 /dev/stdin
$bb ln -sf /proc/self/fd/1 /dev/stdout
$bb ln -sf /proc/self/fd/2 /dev/stderr
$bb mkdir -p /run/log /run/sshd
$bb hostname @GUEST_HOSTNAME@
$bb ip addr add 10.0.2.15/24 dev eth0
$bb ip link set eth0 up
$bb ip route add default via 10.0.2.2

/usr/sbin/sshd -D -E /run/log/sshd.log </dev/null &

for port in /sys/class/virtio-ports/*; do
	name=
	read -r name <"$port/name" 2>/dev/null
	if [ "$name" = "@QGA_PORT_NAME@" ]; then
		/usr/sbin/qemu-ga -m virtio-serial -p "/dev/${port##*/}" -l /run/log/qemu-ga.log </dev/null &
	fi
done

read -r uptime _ </proc/uptime
say "services started on $($bb uname -r) at ${uptime}s"

# dash's wait reaps every child that exits meanwhile, orphans re-parented to
# PID 1 included, so waiting is all the reaping PID 1 needs.
wait "$agent_pid"
say "the agent exited with status $?"
while :; do
	sleep infinity &
	wait $!
done
