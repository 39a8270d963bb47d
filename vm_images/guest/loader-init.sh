#!/bin/sh
# /init of the loader initrd (busybox sh): load the virtio and ext4 modules,
# mount the root disk and hand over to the real root's PID 1.
# Kernel parameters read: uvm.root=DEVICE (default /dev/vda).
export PATH=/bin

fail() {
	echo "uvm-loader: $*" >/dev/console
	# With -no-reboot and panic=-1 this ends QEMU, so the launcher fails fast.
	poweroff -f
}

mount -t devtmpfs devtmpfs /dev || fail "cannot mount devtmpfs"
mount -t proc proc /proc || fail "cannot mount /proc"
mount -t sysfs sysfs /sys || fail "cannot mount /sys"

root=/dev/vda
for word in $(cat /proc/cmdline); do
	case "$word" in
		uvm.root=*) root="${word#uvm.root=}" ;;
	esac
done

for module in $(cat /lib/modules/modules.load); do
	# An optional accelerated variant (crc32c-intel) may not fit the
	# emulated CPU; the generic module next to it takes over.
	insmod "/lib/modules/$module" 2>/dev/null || echo "uvm-loader: insmod $module failed" >/dev/console
done

# virtio-blk probes synchronously inside insmod, so the node normally exists
# now; the bounded retry only covers a slow devtmpfs.
tries=0
until mount -t ext4 -o rw,noatime "$root" /newroot 2>/dev/null; do
	tries=$((tries + 1))
	[ "$tries" -ge 50 ] && fail "cannot mount the root $root as ext4"
	sleep 0.1
done

umount /proc
umount /sys
mount --move /dev /newroot/dev || fail "cannot move /dev into the root"
exec switch_root /newroot @GUEST_INIT@
fail "switch_root failed"
