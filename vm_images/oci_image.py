"""An OCI image layout of the busybox tree, for ``ctr images import`` or a registry of our own.

``write_image_tarball(path, ref)`` writes the smallest layout containerd 1.6
imports and runs (OCI image-spec ``image-layout.md``): ``oci-layout``,
``index.json`` naming one manifest (annotation
``org.opencontainers.image.ref.name`` = ``ref``, the name the image gets), and
``blobs/sha256/`` holding the manifest, the config
(``{"architecture", "os", "rootfs": {"type": "layers", "diff_ids"}, "config":
{"Env", "Cmd"}}``) and one uncompressed layer: the tree of
:func:`vm_images.busybox.busybox_tree`, owned by root. ``image_layout(ref)``
is the same layout in memory, as the tests' registry serves it
(``tests/support/registry.py``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .busybox import busybox_tree

DEFAULT_REF = "docker.io/uvmexec/busybox:latest"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"


def _layer(tree: Path) -> bytes:
    def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = 0
        return info

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as layer:
        for entry in sorted(tree.iterdir()):
            layer.add(entry, arcname=entry.name, filter=as_root)
    return buffer.getvalue()


def _blob(data: bytes, media_type: str) -> tuple[dict[str, object], str, bytes]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return {"mediaType": media_type, "digest": digest, "size": len(data)}, digest, data


@dataclass(frozen=True)
class ImageLayout:
    """The busybox image as an OCI image layout, in memory: what a tarball or a registry serves."""

    ref: str
    #: ``application/vnd.oci.image.manifest.v1+json`` bytes, and its digest (``sha256:…``).
    manifest: bytes
    manifest_digest: str
    #: Digest -> bytes, for the manifest, the config and the layer.
    blobs: dict[str, bytes]

    def files(self) -> list[tuple[str, bytes]]:
        """The layout's files (``oci-layout``, ``index.json``, ``blobs/sha256/…``), as a tarball holds them."""
        index = json.dumps({"schemaVersion": 2, "manifests": [
            {"mediaType": MANIFEST_TYPE, "digest": self.manifest_digest, "size": len(self.manifest),
             "annotations": {"org.opencontainers.image.ref.name": self.ref}}]}).encode()
        files = [("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()), ("index.json", index)]
        for digest, data in self.blobs.items():
            files.append(("blobs/sha256/" + digest.removeprefix("sha256:"), data))
        return files


def image_layout(ref: str = DEFAULT_REF) -> ImageLayout:
    """The busybox image (one uncompressed layer, amd64/linux), named ``ref``."""
    layer = _layer(busybox_tree())
    layer_descriptor, layer_digest, _ = _blob(layer, LAYER_TYPE)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["/bin/sh"]},
    }, sort_keys=True).encode()
    config_descriptor, config_digest, _ = _blob(config, CONFIG_TYPE)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "config": config_descriptor,
                           "layers": [layer_descriptor]}, sort_keys=True).encode()
    _, manifest_digest, _ = _blob(manifest, MANIFEST_TYPE)
    return ImageLayout(ref, manifest, manifest_digest,
                       {layer_digest: layer, config_digest: config, manifest_digest: manifest})


def write_image_tarball(path: str | os.PathLike[str], ref: str = DEFAULT_REF) -> str:
    """Write the busybox image as an OCI layout tarball at ``path``; returns ``ref``."""
    with tarfile.open(path, "w") as tarball:
        for name, data in image_layout(ref).files():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tarball.addfile(info, io.BytesIO(data))
    return ref
