"""Hypervisor isolation's bundle: placed by the host under the VM's share, run by runc in the guest.

A VM (``vm_images``) exports one host directory to its guest over virtio-9p
(:class:`BundleShare`: the host path and the path the guest mounted it at).
For a task in the guest the host — which holds the image layers and the
bundle — does what a shim on the host would do, but onto the share:

- ``share/<task id>/rootfs``: the ``rootfs`` mounts as containerd hands them
  (an overlay, a bind) mounted on the host, in order; without mounts, a
  read-only-as-specified bind of the bundle's own root directory;
- ``share/<task id>/config.json``: the bundle's config.json with
  ``root.path`` set to ``rootfs`` (everything else untouched).

Nothing of the root is copied: the guest reads and writes the host's mounts
through 9p (QEMU's ``security_model=passthrough``, so a file the container's
root writes lands in the overlay's upper dir with its owner and mode). The
agent in the guest then runs runc on the guest path of that directory with
no mounts of its own. :meth:`SharedBundle.remove` unmounts and removes it
all, at the task's ``delete()``.

What stays the guest's: the ``mounts`` of config.json (a bind's source is a
guest path), hooks, and runc's state. The host's part is undone only by the
``delete()`` of the task made with it; if that never comes (the client went
away), it stays until the VM stops, which takes every mount off the share
(``vm_images.launch.release_share``).

The config.json is checked here first (:func:`common.supervisor.bundle.load_bundle`),
so a bad bundle fails with the same clear error as for a process-isolated
task, before anything is placed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

from common.errors import AlreadyExistsError, InvalidArgumentError
from common.supervisor.bundle import CONFIG_NAME, load_bundle
from common.supervisor.mounts import mount_all, unmount
from common.supervisor.task import check_container_id
from common.task import Mount

log = logging.getLogger(__name__)

ROOTFS = "rootfs"


@dataclass(frozen=True)
class BundleShare:
    """A host directory a guest sees at ``guest_dir`` (a VM's virtio-9p share).

    ``vm_images.GuestInfo`` has both: ``BundleShare(info.share_dir, info.guest_share_dir)``.
    """

    host_dir: str | os.PathLike[str]
    guest_dir: str

    def __post_init__(self) -> None:
        if not os.path.isabs(os.fspath(self.host_dir)) or not self.guest_dir.startswith("/"):
            raise InvalidArgumentError(f"share: {self.host_dir!r} and {self.guest_dir!r} must be absolute paths")


class SharedBundle:
    """The bundle of task ``task_id`` placed under ``share`` (see the module docstring).

    Raises ``InvalidArgumentError`` (a bad bundle, a mount the kernel refuses)
    or ``AlreadyExistsError`` (the task's directory is there already) and then
    leaves nothing behind.
    """

    def __init__(self, share: BundleShare, task_id: str, bundle: str, rootfs: Sequence[Mount]) -> None:
        check_container_id(task_id)
        config = load_bundle(bundle)
        host_share = os.fspath(share.host_dir)
        if not os.path.isdir(host_share):
            raise InvalidArgumentError(f"share: {host_share!r} is not a directory (is the VM running?)")
        if rootfs and config.root != os.path.join(bundle, ROOTFS):
            raise InvalidArgumentError(
                f"bundle {bundle!r}: config.json: root.path: must be 'rootfs' when rootfs mounts are given")
        if not rootfs and not os.path.isdir(config.root):
            raise InvalidArgumentError(f"bundle {bundle!r}: root filesystem {config.root!r} is not a directory")
        self.host_path = os.path.join(host_share, task_id)
        self.guest_path = f"{share.guest_dir.rstrip('/')}/{task_id}"
        self._rootfs = os.path.join(self.host_path, ROOTFS)
        self._mounted = 0
        try:
            os.mkdir(self.host_path, 0o700)
        except FileExistsError:
            raise AlreadyExistsError(f"task {task_id!r}: {self.host_path!r} is in the share already") from None
        try:
            os.mkdir(self._rootfs, 0o755)
            with open(os.path.join(bundle, CONFIG_NAME), "rb") as source:
                document = json.load(source)
            document["root"]["path"] = ROOTFS
            with open(os.path.join(self.host_path, CONFIG_NAME), "w") as target:
                json.dump(document, target)
            if rootfs:
                self._mounted = mount_all(rootfs, self._rootfs)
            else:
                # The bundle's own root, as it is: runc applies root.readonly in the guest.
                self._mounted = mount_all([Mount("bind", config.root, ["rbind"])], self._rootfs)
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        """Unmount what was mounted here and delete the task's directory from the share. Never raises."""
        unmount(self._rootfs, self._mounted)
        self._mounted = 0
        # Never a recursive removal: were the root still mounted, it would delete the container's files.
        for remove, path in ((os.unlink, os.path.join(self.host_path, CONFIG_NAME)), (os.rmdir, self._rootfs),
                             (os.rmdir, self.host_path)):
            try:
                remove(path)
            except FileNotFoundError:
                pass
            except OSError as error:
                log.error("removing %s from the share: %s", path, error.strerror)
