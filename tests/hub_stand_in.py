"""A stand-in for the Hugging Face Hub on 127.0.0.1, for tests that must never reach the internet.

It serves model repositories made of local files in the hub's URL layout, with the headers
``huggingface_hub`` reads (learnt from its ``file_download.py`` and ``hf_api.py``):

- ``HEAD|GET /{repo}/resolve/{revision}/{path}``: a plain file answers ``200`` with ``ETag``
  (its git blob id), ``X-Repo-Commit`` and ``Content-Length``; an LFS file (weights) answers
  ``302`` to a second server, the stand-in for the hub's storage (another origin, so the client
  stops there and reads the metadata from the redirect), with ``X-Linked-Etag`` (the SHA-256),
  ``X-Linked-Size`` and ``X-Repo-Commit``. The storage answers ``Range`` requests (``206``).
  No Xet headers are sent: the client downloads over plain HTTP.
- ``GET /api/models/{repo}/revision/{revision}``: the repository's commit (``sha``) and files.
- ``GET /api/models/{repo}/tree/{revision}``: the file listing with sizes, blob ids and LFS
  metadata (``snapshot_download``'s).
- ``POST /api/models/{repo}/paths-info/{revision}``: the same for the ``paths`` asked.

Errors as the hub sends them: ``401`` + ``X-Error-Code: GatedRepo`` for a gated repository
without the token, ``404`` + ``RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound``.
:attr:`StandInHub.drop_once` makes the storage close the connection halfway through a file once.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".pt", ".pth", ".safetensors", ".bin")  # stored in LFS, as on the hub
LFS_POINTER_SIZE = 134  # bytes of an LFS pointer file (reported, not used)


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class RepoFileEntry:
    """One file of a stand-in repository."""

    path: str
    source: Path
    size: int
    blob_id: str  # git blob id (of the LFS pointer for an LFS file; any stable id here)
    sha256: str | None  # LFS files only

    @classmethod
    def of(cls, path: str, source: Path) -> RepoFileEntry:
        content = source.read_bytes()
        lfs = path.endswith(LFS_SUFFIXES)
        return cls(
            path=path,
            source=source,
            size=len(content),
            blob_id=git_blob_id(content if not lfs else f"lfs {path}".encode()),
            sha256=hashlib.sha256(content).hexdigest() if lfs else None,
        )

    def listing(self) -> dict:
        entry = {"type": "file", "oid": self.blob_id, "size": self.size, "path": self.path}
        if self.sha256 is not None:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": LFS_POINTER_SIZE}
        return entry


@dataclass
class StandInRepo:
    """A model repository: ``{path in repo: local file}``; ``gated``: needs the hub's token."""

    files: Mapping[str, Path]
    gated: bool = False
    entries: dict[str, RepoFileEntry] = field(init=False)
    commit: str = field(init=False)

    def __post_init__(self) -> None:
        self.entries = {p: RepoFileEntry.of(p, Path(s)) for p, s in sorted(self.files.items())}
        ids = "".join(f"{e.path}:{e.sha256 or e.blob_id}" for e in self.entries.values())
        self.commit = hashlib.sha1(ids.encode()).hexdigest()


class StandInHub:
    """The two servers (hub and storage), started by :meth:`start`, stopped by :meth:`stop`.

    Attributes:
        repos: ``{repo_id: StandInRepo}``.
        token: what ``Authorization: Bearer`` must carry for a gated repository.
        drop_once: paths in a repository whose next storage download is cut halfway.
        requests: ``(method, path)`` of every request, in order.
    """

    def __init__(self, repos: Mapping[str, StandInRepo], *, token: str = "hf_stand_in") -> None:
        self.repos = dict(repos)
        self.token = token
        self.drop_once: set[str] = set()
        self.requests: list[tuple[str, str]] = []
        self._servers: list[ThreadingHTTPServer] = []
        self.endpoint = ""
        self.storage = ""

    def start(self) -> StandInHub:
        hub = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, storage=False))
        storage = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, storage=True))
        self._servers = [hub, storage]
        for server in self._servers:
            threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{hub.server_address[1]}"
        self.storage = f"http://127.0.0.1:{storage.server_address[1]}"
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers = []

    def blob(self, sha256: str) -> RepoFileEntry | None:
        for repo in self.repos.values():
            for entry in repo.entries.values():
                if entry.sha256 == sha256:
                    return entry
        return None


def _handler(hub: StandInHub, *, storage: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        # ------------------------------------------------------------------ responses

        def reply(self, status: int, headers: Mapping[str, str], body: bytes = b"") -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            if "Content-Length" not in headers:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def error(self, status: int, code: str, message: str, commit: str | None = None):
            headers = {"X-Error-Code": code, "X-Error-Message": message}
            if commit:
                headers["X-Repo-Commit"] = commit
            self.reply(status, headers, json.dumps({"error": message}).encode())

        def json_reply(self, value) -> None:
            self.reply(200, {"Content-Type": "application/json"}, json.dumps(value).encode())

        # ------------------------------------------------------------------ routing

        def do_HEAD(self) -> None:
            self.route()

        def do_GET(self) -> None:
            self.route()

        def do_POST(self) -> None:
            self.route()

        def route(self) -> None:
            url = urlsplit(self.path)
            hub.requests.append((self.command, url.path))
            if storage:
                return self.serve_blob(url.path.strip("/"))
            parts = [unquote(p) for p in url.path.strip("/").split("/")]
            if parts[:2] == ["api", "models"] and len(parts) >= 6:
                repo_id, kind, revision = f"{parts[2]}/{parts[3]}", parts[4], parts[5]
                return self.api(repo_id, kind, revision, url.query)
            if len(parts) >= 5 and parts[2] == "resolve":
                repo_id, revision = f"{parts[0]}/{parts[1]}", parts[3]
                return self.resolve(repo_id, revision, "/".join(parts[4:]))
            self.error(404, "NotFound", f"no route {url.path}")

        def repo(self, repo_id: str, revision: str) -> StandInRepo | None:
            """The repository, or ``None`` after answering the error."""
            repo = hub.repos.get(repo_id)
            if repo is None:
                self.error(404, "RepoNotFound", f"Repository {repo_id} not found")
                return None
            if repo.gated and self.headers.get("Authorization") != f"Bearer {hub.token}":
                self.error(
                    401,
                    "GatedRepo",
                    f"Access to model {repo_id} is restricted. You must have access to it and "
                    "be authenticated to access it. Please log in.",
                )
                return None
            if revision not in ("main", repo.commit):
                self.error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return None
            return repo

        def api(self, repo_id: str, kind: str, revision: str, query: str) -> None:
            repo = self.repo(repo_id, revision)
            if repo is None:
                return
            if kind == "revision":
                siblings = [{"rfilename": path} for path in repo.entries]
                return self.json_reply(
                    {"id": repo_id, "sha": repo.commit, "siblings": siblings, "private": False}
                )
            if kind == "tree":
                return self.json_reply([e.listing() for e in repo.entries.values()])
            if kind == "paths-info":
                length = int(self.headers.get("Content-Length", 0))
                form = parse_qs(self.rfile.read(length).decode())
                asked = form.get("paths", [])
                return self.json_reply(
                    [repo.entries[p].listing() for p in asked if p in repo.entries]
                )
            self.error(404, "NotFound", f"no api {kind}")

        def resolve(self, repo_id: str, revision: str, path: str) -> None:
            repo = self.repo(repo_id, revision)
            if repo is None:
                return
            entry = repo.entries.get(path)
            if entry is None:
                self.error(404, "EntryNotFound", f"{path} does not exist", commit=repo.commit)
                return
            headers = {"X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes"}
            if entry.sha256 is not None:  # LFS: to the storage, the metadata on the redirect
                headers.update(
                    {
                        "Location": f"{hub.storage}/{entry.sha256}",
                        "X-Linked-Etag": f'"{entry.sha256}"',
                        "X-Linked-Size": str(entry.size),
                        "ETag": f'"{entry.blob_id}"',
                    }
                )
                return self.reply(302, headers)
            headers.update({"ETag": f'"{entry.blob_id}"', "Content-Length": str(entry.size)})
            self.reply(200, headers, entry.source.read_bytes())

        # ------------------------------------------------------------------ storage

        def serve_blob(self, sha256: str) -> None:
            entry = hub.blob(sha256)
            if entry is None:
                return self.error(404, "NotFound", "no such object")
            content = entry.source.read_bytes()
            start = 0
            status = 200
            headers = {"Accept-Ranges": "bytes", "ETag": f'"{sha256}"'}
            if (wanted := self.headers.get("Range", "")).startswith("bytes="):
                start = int(wanted[len("bytes=") :].split("-")[0])
                status = 206
                headers["Content-Range"] = f"bytes {start}-{len(content) - 1}/{len(content)}"
            body = content[start:]
            headers["Content-Length"] = str(len(body))
            key = f"{entry.path}"
            if self.command == "GET" and key in hub.drop_once and start == 0:
                hub.drop_once.discard(key)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.reply(status, headers, body)

    return Handler


def use_hf_home(patch, home: Path) -> None:
    """Point huggingface_hub at the cache folder ``home`` (``HF_HOME``), with no token, for this
    process (it reads its settings at import: its constants are set too) and its subprocesses;
    ``patch``: a ``pytest.MonkeyPatch``."""
    import huggingface_hub.constants as constants

    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN"):
        patch.delenv(name, raising=False)
    patch.setenv("HF_HOME", str(home))
    patch.setattr(constants, "HF_HOME", str(home))
    patch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    patch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    patch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
