"""A Hugging Face Hub repo id -> a local snapshot directory in the standard HF cache.

``download_model("ORG/NAME", revision)`` lists the repo, picks the files the engine needs (config,
generation config, tokenizer and chat-template files, then the ``*.safetensors`` named by the index or
all of them; ``pytorch_model*.bin`` only when the repo has no safetensors; a named ``.gguf`` file), checks
the free disk space, and downloads them with ``huggingface_hub.snapshot_download`` (progress bar, the
cache layout every HF tool reads) under a per-repo file lock, so replicas sharing one cache volume
download each file once and never see a half-written snapshot.

Settings are read from the environment at call time: ``HF_ENDPOINT``, ``HF_TOKEN`` (or the token file
of ``HF_HOME``), ``HF_HUB_CACHE`` / ``HF_HOME`` (or ``download_dir``, vLLM's ``--download-dir``), and
``HF_HUB_OFFLINE`` (serve from the cache only). When the Hub cannot be reached (connection refused,
timeout, 5xx) and the snapshot is complete in the cache, the cached copy is served with a warning.
Every failure is a :class:`HubError` whose message names the model and says what to do.
"""
from __future__ import annotations

import errno
import fnmatch
import json
import logging
import os
import re
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

logger = logging.getLogger(__name__)

#: ``ORG/NAME`` (optionally ``hf://ORG/NAME``, optionally ``:FILE.gguf`` naming one GGUF file of the repo)
REPO_ID = re.compile(r"^(?:hf://)?(?P<repo>[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+)(?::(?P<file>[^/:]+\.gguf))?$")
CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_PATTERNS = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.*", "merges.txt",
                      "chat_template*", "*.tiktoken", "preprocessor_config.json")
ST_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
LOCK_WAIT_LOG_S = 30.0


class HubError(ValueError):
    """A Hub model that cannot be served; the message names the model and what to do."""


@dataclass(frozen=True)
class RepoRef:
    repo_id: str
    gguf_file: str | None = None


def parse_repo_id(model: str) -> RepoRef | None:
    """``ORG/NAME``, ``hf://ORG/NAME`` or ``ORG/NAME:FILE.gguf`` -> RepoRef; anything else -> None."""
    m = REPO_ID.match(model.strip())
    if m is None or ".." in m.group("repo"):
        return None
    return RepoRef(m.group("repo"), m.group("file"))


@dataclass(frozen=True)
class HubSettings:
    endpoint: str
    cache_dir: str
    token: str | None
    offline: bool
    timeout: float


def _is_true(v: str | None) -> bool:
    return (v or "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_settings(download_dir: str | None = None) -> HubSettings:
    """The Hub settings from the environment, read now (not at import)."""
    from huggingface_hub import constants, get_token

    if download_dir:
        cache = os.path.expanduser(download_dir)
    elif os.environ.get("HF_HUB_CACHE"):
        cache = os.path.expanduser(os.environ["HF_HUB_CACHE"])
    else:
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
        cache = os.path.join(os.path.expanduser(home), "hub")
    return HubSettings(
        endpoint=(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/"),
        cache_dir=cache,
        token=os.environ.get("HF_TOKEN") or get_token() or None,
        offline=_is_true(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")),
        timeout=float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or 10.0),
    )


# -- progress, for /health while the server starts ------------------------------------------------
@dataclass
class _Download:
    repo_id: str
    blobs_dir: str
    total_bytes: int | None
    waiting_for_lock: bool = False
    started: float = field(default_factory=time.monotonic)


_ACTIVE: dict[int, _Download] = {}
_ACTIVE_LOCK = threading.Lock()


def active_downloads() -> list[dict]:
    """Downloads in progress in this process: model, bytes in its cache so far, total, waiting."""
    with _ACTIVE_LOCK:
        items = list(_ACTIVE.values())
    out = []
    for d in items:
        try:
            done = sum(e.stat().st_size for e in os.scandir(d.blobs_dir) if e.is_file(follow_symlinks=False))
        except OSError:
            done = 0
        out.append({"model": d.repo_id, "downloaded_bytes": done, "total_bytes": d.total_bytes,
                    "waiting_for_lock": d.waiting_for_lock, "seconds": round(time.monotonic() - d.started, 1)})
    return out


@contextmanager
def _tracked(d: _Download) -> Iterator[_Download]:
    with _ACTIVE_LOCK:
        _ACTIVE[id(d)] = d
    try:
        yield d
    finally:
        with _ACTIVE_LOCK:
            _ACTIVE.pop(id(d), None)


# -- file selection --------------------------------------------------------------------------------
def _meta_files(files: dict[str, int | None]) -> list[str]:
    return [f for f in files if "/" not in f and (f in CONFIG_FILES or any(fnmatch.fnmatch(f, p) for p in TOKENIZER_PATTERNS))]


def _gguf_files(files: dict[str, int | None]) -> list[str]:
    return sorted(f for f in files if f.endswith(".gguf"))


def select_files(repo_id: str, files: dict[str, int | None], load_format: str = "auto",
                 gguf_file: str | None = None, index: dict | None = None, tokenizer_only: bool = False) -> list[str]:
    """The files of ``repo_id`` the engine needs (``files``: path -> size). ``index``: the parsed
    ``model.safetensors.index.json`` when the repo has one (its shards are the weights)."""
    if gguf_file is not None:
        if gguf_file not in files:
            listed = ", ".join(_gguf_files(files)) or "none"
            raise HubError(f"model {repo_id!r}: the repository has no file {gguf_file!r} (its .gguf files: {listed})")
        return [gguf_file]
    meta = _meta_files(files)
    if tokenizer_only:
        if not any(f.startswith("tokenizer") or f in ("vocab.json", "vocab.txt") for f in meta):
            raise HubError(f"tokenizer {repo_id!r}: the repository has no tokenizer files (tokenizer.json, "
                           "tokenizer.model, vocab.json): pass another --tokenizer")
        return meta
    if "config.json" not in files:
        ggufs = _gguf_files(files)
        if ggufs:
            raise HubError(_gguf_only(repo_id, ggufs))
        raise HubError(f"model {repo_id!r}: the repository has no config.json, so it is not a Transformers model "
                       f"repository (files: {_sample(files)}); pass a model repository, a directory or a .gguf file")
    if load_format == "dummy":
        return meta
    top = [f for f in files if "/" not in f]
    if ST_INDEX in files and index is not None:
        shards = sorted(set(index.get("weight_map", {}).values()))
        missing = [s for s in shards if s not in files]
        if missing:
            raise HubError(f"model {repo_id!r}: {ST_INDEX} names shards the repository does not have: {missing[:3]}")
        return meta + [ST_INDEX] + shards
    st = [f for f in top if f.endswith(".safetensors")]
    if st:
        hf_style = [f for f in st if not f.startswith("consolidated")]
        return meta + (hf_style or st)  # Mistral repos also hold consolidated*.safetensors (the same weights)
    bins = [f for f in top if fnmatch.fnmatch(f, "pytorch_model*.bin")]
    if bins:
        return meta + bins + ([BIN_INDEX] if BIN_INDEX in files else [])
    ggufs = _gguf_files(files)
    if ggufs:
        raise HubError(_gguf_only(repo_id, ggufs))
    raise HubError(f"model {repo_id!r}: the repository has no loadable weights (no *.safetensors, no "
                   f"pytorch_model*.bin, no .gguf; files: {_sample(files)}); pass another model or revision, "
                   "or --load-format dummy for random weights")


def _gguf_only(repo_id: str, ggufs: list[str]) -> str:
    return (f"model {repo_id!r} holds GGUF files only: name the one to serve as --model {repo_id}:FILE.gguf "
            f"(files: {', '.join(ggufs[:12])}{' ...' if len(ggufs) > 12 else ''})")


def _sample(files: dict[str, int | None]) -> str:
    names = sorted(files)
    return ", ".join(names[:8]) + (" ..." if len(names) > 8 else "") if names else "none"


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"


# -- errors ----------------------------------------------------------------------------------------
def _http_error(e: Exception, what: str, repo_id: str, s: HubSettings) -> HubError:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    resp = getattr(e, "response", None)
    status = getattr(resp, "status_code", None)
    page = f"{s.endpoint}/{repo_id}"
    secret = "(Kubernetes: spec.model.hfTokenSecret)"
    if isinstance(e, RevisionNotFoundError):
        return HubError(f"{what}: the revision does not exist on {s.endpoint} (HTTP {status}): pass an existing "
                        "branch, tag or commit hash with --revision (spec.model.revision)")
    if isinstance(e, GatedRepoError):
        if not s.token:
            return HubError(f"{what} is a gated repository and no HF_TOKEN is set (HTTP {status}): accept its "
                            f"license at {page} and pass a token of that account in HF_TOKEN {secret}")
        return HubError(f"{what} is a gated repository and the account of HF_TOKEN has no access to it "
                        f"(HTTP {status}): request access at {page}, or use a token of an account that has it")
    if isinstance(e, RepositoryNotFoundError):
        hint = ("HF_TOKEN is set: if the repository is private, its account needs read access" if s.token else
                f"if it is private or gated, set HF_TOKEN {secret}")
        return HubError(f"{what} was not found on {s.endpoint} (HTTP {status}): check the repository id "
                        f"(ORG/NAME, case-sensitive); {hint}")
    if status == 401:
        return HubError(f"{what}: {s.endpoint} rejected HF_TOKEN (HTTP 401, invalid credentials): set a valid "
                        f"token {secret}")
    if status == 403:
        return HubError(f"{what}: {s.endpoint} denied access (HTTP 403): HF_TOKEN needs read access to {page}")
    return HubError(f"{what}: the Hub at {s.endpoint} answered HTTP {status}: {str(e).splitlines()[0][:300]}")


def _is_unreachable(e: Exception) -> bool:
    """Connection refused / DNS / timeout / proxy / offline mode, or the Hub answering 5xx."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        from httpx2 import TransportError  # huggingface_hub 2.x
    except ImportError:  # pragma: no cover - 1.x
        from httpx import TransportError
    if isinstance(e, (TransportError, OfflineModeIsEnabled)):
        return True
    status = getattr(getattr(e, "response", None), "status_code", None)
    return isinstance(e, HfHubHTTPError) and status is not None and status >= 500


def _disk_full(what: str, s: HubSettings, needed: int | None, e: OSError | None = None) -> HubError:
    free = _free_bytes(s.cache_dir)
    size = f"it needs {_gib(needed)}" if needed is not None else "the download did not fit"
    have = f", {_gib(free)} free" if free is not None else ""
    return HubError(f"{what}: not enough disk space in the cache {s.cache_dir}: {size}{have}"
                    f"{f' ({e.strerror})' if e is not None else ''}; enlarge the volume (Kubernetes: "
                    "spec.modelCache.sizeLimit or the claim's size), free space, or pick another --download-dir")


def _free_bytes(path: str) -> int | None:
    p = os.path.abspath(path)
    while True:
        try:
            return shutil.disk_usage(p).free
        except OSError:
            parent = os.path.dirname(p)
            if parent == p:
                return None
            p = parent


# -- downloading -----------------------------------------------------------------------------------
def _storage(s: HubSettings, repo_id: str) -> str:
    from huggingface_hub.file_download import repo_folder_name

    return os.path.join(s.cache_dir, repo_folder_name(repo_id=repo_id, repo_type="model"))


@contextmanager
def _repo_lock(s: HubSettings, repo_id: str, d: _Download) -> Iterator[None]:
    """One downloader per repo and cache directory, across processes and hosts sharing the volume."""
    from filelock import FileLock, Timeout
    from huggingface_hub.file_download import repo_folder_name

    lock_dir = os.path.join(s.cache_dir, ".locks", "pagedserve")
    try:
        os.makedirs(lock_dir, exist_ok=True)
    except OSError as e:
        raise HubError(f"model {repo_id!r}: cannot write to the cache directory {s.cache_dir} ({e.strerror}): make "
                       "it writable for this user (Kubernetes: the pod's fsGroup owns the cache volume), or set "
                       "HF_HUB_OFFLINE=1 to serve a complete cached copy read-only") from None
    lock = FileLock(os.path.join(lock_dir, repo_folder_name(repo_id=repo_id, repo_type="model") + ".lock"))
    while True:
        try:
            lock.acquire(timeout=LOCK_WAIT_LOG_S if d.waiting_for_lock else 0.5)
            break
        except Timeout:
            d.waiting_for_lock = True
            logger.info("waiting for another process downloading %s into %s (lock %s)", repo_id, s.cache_dir,
                        lock.lock_file)
    d.waiting_for_lock = False
    try:
        yield
    finally:
        lock.release()


def download_model(repo_id: str, revision: str | None = None, *, download_dir: str | None = None,
                   load_format: str = "auto", gguf_file: str | None = None, tokenizer_only: bool = False) -> str:
    """Download what the engine needs of ``repo_id`` into the HF cache; return the local path (the
    snapshot directory, or the ``.gguf`` file's path when ``gguf_file`` is given)."""
    s = hub_settings(download_dir)
    kind = "tokenizer" if tokenizer_only else "model"
    what = f"{kind} {repo_id!r}" + (f" (revision {revision!r})" if revision else "")
    if s.offline:
        return _from_cache(repo_id, revision, s, what, "HF_HUB_OFFLINE is set", load_format, gguf_file, tokenizer_only)
    storage = _storage(s, repo_id)
    d = _Download(repo_id, os.path.join(storage, "blobs"), None)
    with _tracked(d):
        return _download(repo_id, revision, s, what, load_format, gguf_file, tokenizer_only, d)


def _download(repo_id: str, revision: str | None, s: HubSettings, what: str, load_format: str,
              gguf_file: str | None, tokenizer_only: bool, d: _Download) -> str:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=s.endpoint, token=s.token or False)
    try:
        info = api.model_info(repo_id, revision=revision, files_metadata=True, timeout=s.timeout)
    except Exception as e:  # noqa: BLE001 - mapped to a clear HubError below
        if _is_unreachable(e):
            reason = f"the Hub at {s.endpoint} cannot be reached ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
            path = _from_cache(repo_id, revision, s, what, reason, load_format, gguf_file, tokenizer_only)
            logger.warning("%s; serving %s from the cache %s", reason, what, path)
            return path
        if _is_http(e):
            raise _http_error(e, what, repo_id, s) from None
        raise
    files = {sib.rfilename: sib.size for sib in (info.siblings or [])}
    storage = _storage(s, repo_id)
    with _repo_lock(s, repo_id, d):
        index = None
        if ST_INDEX in files and gguf_file is None and load_format != "dummy" and not tokenizer_only:
            index = _read_json(_hub_file(repo_id, ST_INDEX, info.sha, s, what))
        wanted = select_files(repo_id, files, load_format, gguf_file, index, tokenizer_only)
        snapshot = os.path.join(storage, "snapshots", info.sha or "")
        todo = [f for f in wanted if not os.path.exists(os.path.join(snapshot, f))]
        sizes = [files.get(f) for f in todo]
        needed = sum(x for x in sizes if x) if all(x is not None for x in sizes) else None
        d.total_bytes = sum(files.get(f) or 0 for f in wanted)
        free = _free_bytes(s.cache_dir)
        if needed is not None and free is not None and needed > free:
            raise _disk_full(what, s, needed)
        if todo:
            logger.info("downloading %d file(s) of %s from %s into %s (%s)", len(todo), what, s.endpoint,
                        s.cache_dir, _gib(needed) if needed is not None else "size unknown")
        t0 = time.perf_counter()
        path = _snapshot(repo_id, revision, s, what, wanted, needed)
        if todo:
            logger.info("downloaded %s in %.1f s", what, time.perf_counter() - t0)
    return os.path.join(path, gguf_file) if gguf_file else path


def _is_http(e: Exception) -> bool:
    from huggingface_hub.errors import HfHubHTTPError

    return isinstance(e, HfHubHTTPError)


def _snapshot(repo_id: str, revision: str | None, s: HubSettings, what: str, wanted: list[str],
              needed: int | None) -> str:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, revision=revision, cache_dir=s.cache_dir, endpoint=s.endpoint,
                                 token=s.token or False, allow_patterns=wanted, etag_timeout=s.timeout)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise _disk_full(what, s, needed, e) from None
        if _is_http(e):
            raise _http_error(e, what, repo_id, s) from None
        if _is_unreachable(e):
            raise HubError(f"{what}: the download from {s.endpoint} failed ({type(e).__name__}: {e}); the files "
                           "downloaded so far stay in the cache and the next start resumes") from None
        raise
    except Exception as e:  # noqa: BLE001 - httpx errors are not OSErrors
        if _is_unreachable(e):
            raise HubError(f"{what}: the download from {s.endpoint} failed ({type(e).__name__}: {e}); the files "
                           "downloaded so far stay in the cache and the next start resumes") from None
        raise


def _hub_file(repo_id: str, filename: str, commit: str | None, s: HubSettings, what: str) -> str:
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id, filename, revision=commit, cache_dir=s.cache_dir, endpoint=s.endpoint,
                               token=s.token or False, etag_timeout=s.timeout)
    except Exception as e:  # noqa: BLE001
        if _is_http(e):
            raise _http_error(e, what, repo_id, s) from None
        raise


def _read_json(path: str) -> dict:
    with open(path) as fh:
        return json.load(fh)


def _from_cache(repo_id: str, revision: str | None, s: HubSettings, what: str, reason: str, load_format: str,
                gguf_file: str | None, tokenizer_only: bool) -> str:
    """The complete cached snapshot of ``repo_id`` at ``revision``, with no network request."""
    from huggingface_hub import get_cached_repo_tree, snapshot_download, try_to_load_from_cache
    from huggingface_hub.errors import CachedRepoTreeNotFoundError, LocalEntryNotFoundError

    todo = (f"{what} is not (completely) in the cache {s.cache_dir} and {reason}: ")
    fix = ("let the pod reach the Hub (network, HTTPS_PROXY, HF_ENDPOINT) or unset HF_HUB_OFFLINE, or fill that "
           "cache first (the same HF_HOME or --download-dir) with one online start")
    try:
        tree = get_cached_repo_tree(repo_id, revision=revision, cache_dir=s.cache_dir)
    except CachedRepoTreeNotFoundError:
        raise HubError(todo + fix) from None
    files = {f.path: f.size for f in tree}
    index = None
    if ST_INDEX in files and gguf_file is None and load_format != "dummy" and not tokenizer_only:
        cached = try_to_load_from_cache(repo_id, ST_INDEX, cache_dir=s.cache_dir, revision=revision)
        if not isinstance(cached, str):
            raise HubError(todo + fix)
        index = _read_json(cached)
    wanted = select_files(repo_id, files, load_format, gguf_file, index, tokenizer_only)
    try:
        path = snapshot_download(repo_id, revision=revision, cache_dir=s.cache_dir, local_files_only=True,
                                 allow_patterns=wanted)
    except LocalEntryNotFoundError:
        raise HubError(todo + fix) from None
    return os.path.join(path, gguf_file) if gguf_file else path
