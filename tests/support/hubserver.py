"""A minimal Hugging Face hub on loopback: serves folders as repositories for huggingface_hub.

Answers `HEAD/GET /{org}/{repo}/resolve/{revision}/{filename}` with the headers huggingface_hub
reads (X-Repo-Commit, ETag, Content-Length); 404 with `X-Error-Code: EntryNotFound` for a missing
file and `RepoNotFound` for a missing repository. Only 127.0.0.1 is bound.
"""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _Handler(BaseHTTPRequestHandler):
    repos: dict[str, Path] = {}
    requests: list[str] = []

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _resolve(self) -> tuple[int, Path | None, str]:
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return 404, None, "RepoNotFound"
        repo = "/".join(parts[:2])
        filename = "/".join(parts[4:])
        if repo not in self.repos:
            return 404, None, "RepoNotFound"
        path = self.repos[repo] / filename
        if not path.is_file():
            return 404, None, "EntryNotFound"
        return 200, path, ""

    def _respond(self, body: bool) -> None:
        type(self).requests.append(f"{self.command} {self.path}")
        status, path, error = self._resolve()
        if status != 200:
            self.send_response(status)
            self.send_header("X-Error-Code", error)
            self.send_header("X-Error-Message", error)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self) -> None:  # noqa: N802 - http.server naming
        self._respond(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._respond(body=True)


class FakeHub:
    """Context manager: `with FakeHub({"org/repo": folder}) as url:` -> http://127.0.0.1:PORT."""

    def __init__(self, repos: dict[str, Path]) -> None:
        handler = type("Handler", (_Handler,), {"repos": dict(repos), "requests": []})
        self.handler = handler
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def requests(self) -> list[str]:
        return self.handler.requests

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
