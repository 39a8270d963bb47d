"""A tiny read-only OCI registry on loopback, serving images built by the project (no outside registry).

Enough of the distribution API for ``containerd``'s pull (``client.Pull``):
``GET``/``HEAD`` of ``/v2/``, of ``/v2/NAME/manifests/TAG|DIGEST`` (with the
manifest's ``Content-Type`` and ``Docker-Content-Digest``) and of
``/v2/NAME/blobs/DIGEST``. Everything else is a 404 (unknown name, tag or
blob) or a 405 (any other method): nothing can be pushed. containerd talks
plain HTTP to a loopback host, so no TLS is needed.

``Registry(images, host, port)`` serves each :class:`~vm_images.oci_image.ImageLayout`
under its ``ref``'s repository and tag (the ref's registry host, if any, is
ignored), and each one :meth:`Registry.add` adds; ``port=0`` takes a free one. Use it as a context manager: the
server thread is stopped and joined on exit.
"""

from __future__ import annotations

import json
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from vm_images.oci_image import MANIFEST_TYPE, ImageLayout

_PATH = re.compile(r"^/v2/(?P<name>[a-z0-9._/-]+)/(?P<kind>manifests|blobs)/(?P<reference>[A-Za-z0-9_.:+-]+)$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def split_ref(ref: str) -> tuple[str, str]:
    """``host:5000/some/name:tag`` -> (``some/name``, ``tag``); the host part, if any, is dropped."""
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag:
        name, tag = ref, "latest"
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        name = rest
    return name, tag


class Registry:
    """A read-only registry serving ``images`` on ``host:port`` until closed."""

    def __init__(self, images: list[ImageLayout], host: str = "127.0.0.1", port: int = 0) -> None:
        self._manifests: dict[tuple[str, str], tuple[str, bytes]] = {}  # (name, tag or digest) -> (digest, bytes)
        self._blobs: dict[tuple[str, str], bytes] = {}  # (name, digest) -> bytes
        for image in images:
            self.add(image)
        #: Each request served, as "METHOD PATH STATUS" (for a test's report).
        self.requests: list[str] = []
        self._host = host
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="registry", daemon=True)
        self._thread.start()

    def add(self, image: ImageLayout) -> None:
        """Serve ``image`` too (its name may hold :attr:`address`, known only once the registry listens)."""
        name, tag = split_ref(image.ref)
        for digest, data in image.blobs.items():
            self._blobs[(name, digest)] = data
        self._manifests[(name, image.manifest_digest)] = (image.manifest_digest, image.manifest)
        self._manifests[(name, tag)] = (image.manifest_digest, image.manifest)

    @property
    def address(self) -> str:
        """``host:port`` the registry listens on, as an image reference names it."""
        return f"{self._host}:{self._server.server_port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _lookup(self, path: str) -> tuple[HTTPStatus, dict[str, str], bytes]:
        """The status, headers and body a GET of ``path`` gets."""
        if path in ("/v2", "/v2/"):
            return HTTPStatus.OK, {"Content-Type": "application/json"}, b"{}"
        match = _PATH.match(path)
        if match is None:
            return _error(HTTPStatus.NOT_FOUND, "NAME_UNKNOWN", f"no such path: {path}")
        name, kind, reference = match["name"], match["kind"], match["reference"]
        if kind == "manifests":
            found = self._manifests.get((name, reference))
            if found is None:
                return _error(HTTPStatus.NOT_FOUND, "MANIFEST_UNKNOWN", f"manifest unknown: {name}:{reference}")
            digest, manifest = found
            return HTTPStatus.OK, {"Content-Type": MANIFEST_TYPE, "Docker-Content-Digest": digest}, manifest
        if not _DIGEST.match(reference):
            return _error(HTTPStatus.BAD_REQUEST, "DIGEST_INVALID", f"not a sha256 digest: {reference}")
        blob = self._blobs.get((name, reference))
        if blob is None:
            return _error(HTTPStatus.NOT_FOUND, "BLOB_UNKNOWN", f"blob unknown: {name}@{reference}")
        return HTTPStatus.OK, {"Content-Type": "application/octet-stream", "Docker-Content-Digest": reference}, blob

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self, with_body: bool) -> None:
                status, headers, body = registry._lookup(self.path.split("?", 1)[0])
                registry.requests.append(f"{self.command} {self.path} {status.value}")
                self.send_response(status)
                self.send_header("Docker-Distribution-API-Version", "registry/2.0")
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self._answer(with_body=True)

            def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
                self._answer(with_body=False)

            def _read_only(self) -> None:
                registry.requests.append(f"{self.command} {self.path} 405")
                status, headers, body = _error(HTTPStatus.METHOD_NOT_ALLOWED, "UNSUPPORTED", "a read-only registry")
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_PUT = do_PATCH = do_DELETE = _read_only  # noqa: N815 - http.server's names

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
                pass  # every request is in registry.requests

        return Handler


def _error(status: HTTPStatus, code: str, message: str) -> tuple[HTTPStatus, dict[str, str], bytes]:
    body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
    return status, {"Content-Type": "application/json"}, body
