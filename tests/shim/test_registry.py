"""The tests' read-only OCI registry answers as containerd's pull expects (tests/support/registry.py)."""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.support.registry import Registry, split_ref
from vm_images.oci_image import MANIFEST_TYPE, ImageLayout

MANIFEST = json.dumps({"schemaVersion": 2, "layers": []}).encode()
BLOB = b"a blob"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def registry() -> Iterator[Registry]:
    image = ImageLayout("example.com:5000/some/name:1.0", MANIFEST, _digest(MANIFEST),
                        {_digest(MANIFEST): MANIFEST, _digest(BLOB): BLOB})
    with Registry([image]) as server:
        yield server


def _get(registry: Registry, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://{registry.address}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_split_ref_drops_the_host_and_defaults_the_tag() -> None:
    assert split_ref("127.0.0.1:5000/uvmexec/busybox:1.32") == ("uvmexec/busybox", "1.32")
    assert split_ref("localhost/busybox") == ("busybox", "latest")
    assert split_ref("uvmexec/busybox:2") == ("uvmexec/busybox", "2")


def test_serves_the_api_root_manifests_by_tag_and_digest_and_blobs(registry: Registry) -> None:
    status, headers, body = _get(registry, "/v2/")
    assert (status, headers["Docker-Distribution-API-Version"], body) == (200, "registry/2.0", b"{}")
    for reference in ("1.0", _digest(MANIFEST)):
        for method in ("GET", "HEAD"):
            status, headers, body = _get(registry, f"/v2/some/name/manifests/{reference}", method)
            assert status == 200
            assert headers["Content-Type"] == MANIFEST_TYPE
            assert headers["Docker-Content-Digest"] == _digest(MANIFEST)
            assert headers["Content-Length"] == str(len(MANIFEST))
            assert body == (MANIFEST if method == "GET" else b"")
    status, headers, body = _get(registry, f"/v2/some/name/blobs/{_digest(BLOB)}")
    assert (status, headers["Docker-Content-Digest"], body) == (200, _digest(BLOB), BLOB)


def test_unknown_names_tags_and_blobs_are_404_and_writes_are_refused(registry: Registry) -> None:
    assert _get(registry, "/v2/some/name/manifests/2.0")[0] == 404
    assert _get(registry, "/v2/other/manifests/1.0")[0] == 404
    assert _get(registry, f"/v2/some/name/blobs/{_digest(b'other')}")[0] == 404
    assert _get(registry, "/v2/some/name/blobs/not-a-digest")[0] == 400
    status, _, body = _get(registry, "/v2/some/name/blobs/uploads/", "POST")
    assert status == 405
    assert json.loads(body)["errors"][0]["code"] == "UNSUPPORTED"
    assert registry.requests[-1].startswith("POST /v2/some/name/blobs/uploads/ 405")
