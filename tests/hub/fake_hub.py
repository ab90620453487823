"""A local stand-in for the Hugging Face Hub: the HTTP endpoints ``huggingface_hub`` 2.x calls for
``model_info``, ``list_repo_files`` / ``list_repo_tree``, ``snapshot_download`` and ``hf_hub_download``,
serving each configured repo id from a local directory.

Endpoints (what huggingface_hub sends; read from its source):

* ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}`` (``?blobs=true`` adds sizes):
  ``{"id", "sha", "private", "gated", "siblings": [{"rfilename", "size"}]}``;
* ``GET /api/models/{repo}/tree/{rev}[/{path}]`` (``?recursive=``): ``[{"type": "file", "path", "size",
  "oid", "lfs"}]``;
* ``HEAD`` / ``GET /{repo}/resolve/{rev}/{path}``: ``ETag``, ``X-Repo-Commit``, ``Content-Length`` and the
  bytes (``Range`` supported).

Errors carry the Hub's ``X-Error-Code`` / ``X-Error-Message`` headers, as the real Hub does: an unknown
repo is 401 ``RepoNotFound`` without a token and 404 with one; a gated repo lists its files to anyone but
its files answer 401 ``GatedRepo`` without a token and 403 with a token that has no access; a private repo
is ``RepoNotFound`` to anyone without access; an unknown token is 401 "Invalid credentials in
Authorization header"; an unknown revision is 404 ``RevisionNotFound``.

Switches: ``file_delay`` (seconds before each file body), ``report_sizes`` (sizes the API reports instead
of the real ones), ``exclude`` (patterns hidden from a repo), and ``requests`` (every request seen, to
prove that an offline start makes none).

Use it from pytest (``tests/hub/conftest.py``: the ``fake_hub`` fixture) or standalone::

    python tests/hub/fake_hub.py --repo ORG/NAME=DIR [--repo ...] [--gated ORG/NAME] [--token T] --port P
"""
from __future__ import annotations

import argparse
import asyncio
import fnmatch
import hashlib
import os
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from aiohttp import web

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


@dataclass
class FakeRepo:
    """One repo: the files of ``directory`` (minus ``exclude``), at one commit."""

    directory: str
    gated: bool = False
    private: bool = False
    exclude: tuple[str, ...] = ()
    report_sizes: dict[str, int] = field(default_factory=dict)

    def files(self) -> dict[str, str]:
        """repo path -> local path."""
        out = {}
        for root, _, names in os.walk(self.directory):
            for n in names:
                local = os.path.join(root, n)
                path = os.path.relpath(local, self.directory).replace(os.sep, "/")
                if not any(fnmatch.fnmatch(path, p) for p in self.exclude):
                    out[path] = local
        return dict(sorted(out.items()))

    def commit(self, repo_id: str) -> str:
        h = hashlib.sha1(repo_id.encode())
        for path, local in self.files().items():
            st = os.stat(local)
            h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()


def _etag(path: str, local: str) -> str:
    """A stable id of the file's version (the real Hub sends the git blob sha / LFS sha256)."""
    st = os.stat(local)
    return hashlib.sha256(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()


class FakeHub:
    def __init__(self, repos: dict[str, FakeRepo] | None = None, tokens: dict[str, set[str]] | None = None,
                 file_delay: float = 0.0) -> None:
        self.repos: dict[str, FakeRepo] = dict(repos or {})
        #: token -> repo ids it may read when gated/private ("*": all)
        self.tokens: dict[str, set[str]] = dict(tokens or {})
        self.file_delay = file_delay
        self.requests: list[tuple[str, str]] = []
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # -- configuration -----------------------------------------------------------------------------
    def add_repo(self, repo_id: str, directory: str, **kw: Any) -> FakeRepo:
        self.repos[repo_id] = FakeRepo(directory, **kw)
        return self.repos[repo_id]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, method: str | None = None, contains: str = "") -> int:
        return sum(1 for m, p in list(self.requests) if (method is None or m == method) and contains in p)

    # -- HTTP ----------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_get(r"/api/models/{org}/{name}", self.model_info)
        app.router.add_get(r"/api/models/{org}/{name}/revision/{rev:.+}", self.model_info)
        app.router.add_get(r"/api/models/{org}/{name}/tree/{rest:.+}", self.tree)
        app.router.add_get(r"/{org}/{name}/resolve/{rev}/{path:.+}", self.resolve)  # and HEAD
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        return await handler(request)

    @staticmethod
    def _error(status: int, code: str | None, message: str) -> web.Response:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        return web.json_response({"error": message}, status=status, headers=headers)

    def _access(self, request: web.Request, repo_id: str, files: bool) -> web.Response | FakeRepo:
        """The repo, or the error the real Hub would answer."""
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if token is not None and token not in self.tokens:
            return self._error(401, None, "Invalid credentials in Authorization header")
        allowed = token is not None and ({"*", repo_id} & self.tokens[token])
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not allowed):
            if token is None:
                return self._error(401, "RepoNotFound", "Invalid username or password.")
            return self._error(404, "RepoNotFound", "Repository not found")
        if repo.gated and files and not allowed:
            if token is None:
                return self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have "
                                   "access to it and be authenticated to access it. Please log in.")
            return self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not in "
                               "the authorized list.")
        return repo

    def _revision(self, repo_id: str, repo: FakeRepo, rev: str) -> str | None:
        sha = repo.commit(repo_id)
        return sha if unquote(rev) in ("main", sha) else None

    async def model_info(self, request: web.Request) -> web.Response:
        repo_id = f"{request.match_info['org']}/{request.match_info['name']}"
        repo = self._access(request, repo_id, files=False)
        if isinstance(repo, web.Response):
            return repo
        sha = self._revision(repo_id, repo, request.match_info.get("rev", "main"))
        if sha is None:
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        blobs = request.query.get("blobs", "").lower() == "true"
        siblings = []
        for path, local in repo.files().items():
            sib: dict[str, Any] = {"rfilename": path}
            if blobs:
                sib["size"] = repo.report_sizes.get(path, os.path.getsize(local))
            siblings.append(sib)
        return web.json_response({"id": repo_id, "modelId": repo_id, "sha": sha, "private": repo.private,
                                  "gated": "manual" if repo.gated else False, "disabled": False, "tags": [],
                                  "downloads": 0, "likes": 0, "siblings": siblings})

    async def tree(self, request: web.Request) -> web.Response:
        repo_id = f"{request.match_info['org']}/{request.match_info['name']}"
        repo = self._access(request, repo_id, files=False)
        if isinstance(repo, web.Response):
            return repo
        rev, _, sub = request.match_info["rest"].partition("/")
        sha = self._revision(repo_id, repo, rev)
        if sha is None:
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        prefix = unquote(sub).strip("/")
        recursive = request.query.get("recursive", "").lower() == "true"
        out: list[dict[str, Any]] = []
        folders: set[str] = set()
        for path, local in repo.files().items():
            if prefix and not path.startswith(prefix + "/"):
                continue
            rel = path[len(prefix) + 1:] if prefix else path
            if "/" in rel and not recursive:
                folder = (prefix + "/" if prefix else "") + rel.split("/", 1)[0]
                if folder not in folders:
                    folders.add(folder)
                    out.append({"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0,
                                "path": folder})
                continue
            size = repo.report_sizes.get(path, os.path.getsize(local))
            entry: dict[str, Any] = {"type": "file", "oid": _etag(path, local)[:40], "size": size, "path": path}
            if path.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"oid": _etag(path, local), "size": size, "pointerSize": 134}
            out.append(entry)
        return web.json_response(out)

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        repo_id = f"{request.match_info['org']}/{request.match_info['name']}"
        repo = self._access(request, repo_id, files=True)
        if isinstance(repo, web.Response):
            return repo
        sha = self._revision(repo_id, repo, request.match_info["rev"])
        if sha is None:
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        path = unquote(request.match_info["path"])
        local = repo.files().get(path)
        if local is None:
            resp = self._error(404, "EntryNotFound", "Entry not found")
            resp.headers["X-Repo-Commit"] = sha
            return resp
        headers = {"ETag": f'"{_etag(path, local)}"', "X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if request.method == "HEAD":
            headers["Content-Length"] = str(os.path.getsize(local))
            return web.Response(status=200, headers=headers)
        if self.file_delay:
            await asyncio.sleep(self.file_delay)
        return web.FileResponse(local, headers=headers)

    # -- running in a thread (pytest) ----------------------------------------------------------------
    def start(self, port: int = 0) -> "FakeHub":
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self._runner = web.AppRunner(self.app(), access_log=None)
                loop.run_until_complete(self._runner.setup())
                site = web.TCPSite(self._runner, "127.0.0.1", port)
                loop.run_until_complete(site.start())
                self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            except BaseException as e:  # noqa: BLE001 - reported by start()
                errors.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-hub", daemon=True)
        self._thread.start()
        if not ready.wait(30) or errors:
            raise RuntimeError(f"the fake hub did not start: {errors[:1]}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="a local stand-in for the Hugging Face Hub (set HF_ENDPOINT to it)")
    p.add_argument("--repo", action="append", default=[], metavar="ORG/NAME=DIR", required=True)
    p.add_argument("--gated", action="append", default=[], metavar="ORG/NAME")
    p.add_argument("--private", action="append", default=[], metavar="ORG/NAME")
    p.add_argument("--token", action="append", default=[], help="a token that may read every gated/private repo")
    p.add_argument("--file-delay", type=float, default=0.0, help="seconds before each file body")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8900)
    args = p.parse_args(argv)
    hub = FakeHub(tokens={t: {"*"} for t in args.token}, file_delay=args.file_delay)
    for spec in args.repo:
        repo_id, sep, directory = spec.partition("=")
        if not sep or not os.path.isdir(directory):
            p.error(f"--repo {spec!r}: expected ORG/NAME=DIR with an existing directory")
        hub.add_repo(repo_id, directory, gated=repo_id in args.gated, private=repo_id in args.private)
    print(f"fake hub on http://{args.host}:{args.port}: {', '.join(hub.repos)}", flush=True)
    web.run_app(hub.app(), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
