"""A minimal Hugging Face hub on loopback: serves folders as repositories for huggingface_hub, and takes uploads.

Downloads: answers `HEAD/GET /{org}/{repo}/resolve/{revision}/{filename}` with the headers huggingface_hub
reads (X-Repo-Commit, ETag, Content-Length); 404 with `X-Error-Code: EntryNotFound` for a missing file and
`RepoNotFound` for a missing repository.

Uploads (only with `upload_root`): the three endpoints `HfApi.create_repo` + `HfApi.upload_folder` call in
huggingface_hub 1.x/2.x (hf_api.py, _commit_api.py):
    POST /api/repos/create                               {"name", "organization", "visibility"?} -> {"url"}
    POST /api/models/{org}/{repo}/preupload/{revision}   {"files": [{path, sample, size}]} -> upload modes
    POST /api/models/{org}/{repo}/commit/{revision}      NDJSON header + {"key": "file"} lines -> commit info
Every file is answered "regular" by preupload, so the client inlines it (base64) in the commit and no LFS or Xet
transfer is involved. A created repository lives in `upload_root/org/repo` and is then served for download like
the others; each commit gets a new commit id. With `tokens`, write calls need `Authorization: Bearer <token>`
with one of them (401 otherwise). Only 127.0.0.1 is bound.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _Handler(BaseHTTPRequestHandler):
    repos: dict[str, Path] = {}
    requests: list[str] = []
    upload_root: Path | None = None
    tokens: frozenset[str] | None = None
    created: dict[str, dict] = {}
    commits: list[dict] = []
    commit_ids: dict[str, str] = {}
    lock = threading.Lock()

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    # ------------------------------------------------------------------------------------------ downloads

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
            self._error(status, error)
            return
        data = path.read_bytes()
        repo = "/".join(self.path.strip("/").split("/")[:2])
        self.send_response(200)
        self.send_header("X-Repo-Commit", self.commit_ids.get(repo, COMMIT))
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

    # ------------------------------------------------------------------------------------------ uploads

    def _error(self, status: int, code: str, message: str = "", **extra: str) -> None:
        body = json.dumps({"error": message or code, **extra}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message or code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authorised(self) -> bool:
        if self.tokens is None:
            return True
        header = self.headers.get("Authorization", "")
        return header.startswith("Bearer ") and header.removeprefix("Bearer ") in self.tokens

    def do_POST(self) -> None:  # noqa: N802
        type(self).requests.append(f"POST {self.path}")
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.upload_root is None:
            self._error(403, "Forbidden", "this fake hub takes no uploads (no upload_root)")
            return
        if not self._authorised():
            self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
            return
        parts = self.path.split("?")[0].strip("/").split("/")
        with self.lock:
            if parts == ["api", "repos", "create"]:
                self._create(json.loads(body))
            elif len(parts) == 6 and parts[:2] == ["api", "models"] and parts[4] == "preupload":
                self._preupload("/".join(parts[2:4]), json.loads(body))
            elif len(parts) == 6 and parts[:2] == ["api", "models"] and parts[4] == "commit":
                self._commit("/".join(parts[2:4]), parts[5], body)
            else:
                self._error(404, "NotFound", f"no such endpoint {self.path}")

    def _create(self, payload: dict) -> None:
        repo = f"{payload.get('organization')}/{payload.get('name')}"
        url = f"http://{self.headers['Host']}/{repo}"
        if repo in self.repos:  # the hub's 409 names the existing repository; create_repo(exist_ok=True) reads it
            self._error(409, "Conflict", "You already created this model repo", url=url)
            return
        folder = self.upload_root / repo
        folder.mkdir(parents=True)
        self.repos[repo] = folder
        self.created[repo] = payload
        self._json({"url": url, "name": repo})

    def _preupload(self, repo: str, payload: dict) -> None:
        if repo not in self.repos:
            self._error(404, "RepoNotFound", f"Repository {repo} not found")
            return
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in payload["files"]]
        self._json({"files": files, "commitOid": self.commit_ids.get(repo, COMMIT)})

    def _commit(self, repo: str, revision: str, body: bytes) -> None:
        if repo not in self.repos:
            self._error(404, "RepoNotFound", f"Repository {repo} not found")
            return
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next((line["value"] for line in lines if line["key"] == "header"), {})
        written = []
        for line in lines:
            if line["key"] != "file":
                if line["key"] != "header":
                    self._error(400, "BadRequest", f"this fake hub only takes inline files, got {line['key']!r}")
                    return
                continue
            value = line["value"]
            relative = PurePosixPath(value["path"])
            if relative.is_absolute() or ".." in relative.parts:
                self._error(400, "BadRequest", f"bad path {value['path']!r}")
                return
            target = self.repos[repo] / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(base64.b64decode(value["content"]))
            written.append(value["path"])
        oid = hashlib.sha1(f"{repo}:{len(self.commits)}".encode()).hexdigest()
        self.commit_ids[repo] = oid
        self.commits.append({"repo": repo, "revision": revision, "summary": header.get("summary"), "files": written})
        self._json({"commitUrl": f"http://{self.headers['Host']}/{repo}/commit/{oid}", "commitOid": oid})


class FakeHub:
    """Context manager: `with FakeHub({"org/repo": folder}) as url:` -> http://127.0.0.1:PORT.

    `upload_root` (a writable folder) turns on repository creation and commits; `tokens` restricts those to
    requests carrying one of these bearer tokens. `created` (repo -> create payload) and `commits` (one dict per
    commit: repo, revision, summary, files) record what was uploaded.
    """

    def __init__(
        self, repos: dict[str, Path], *, upload_root: Path | None = None, tokens: set[str] | None = None
    ) -> None:
        state = {
            "repos": dict(repos),
            "requests": [],
            "upload_root": upload_root,
            "tokens": frozenset(tokens) if tokens is not None else None,
            "created": {},
            "commits": [],
            "commit_ids": {},
            "lock": threading.Lock(),
        }
        handler = type("Handler", (_Handler,), state)
        self.handler = handler
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def requests(self) -> list[str]:
        return self.handler.requests

    @property
    def created(self) -> dict[str, dict]:
        return self.handler.created

    @property
    def commits(self) -> list[dict]:
        return self.handler.commits

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
