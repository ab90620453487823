"""models/hub.py against the fake Hub (real huggingface_hub HTTP over loopback): file selection, the
cache, offline restarts, every error a user can hit, and two processes downloading one repo at once."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest

from pagedserve.models.hub import HubError, download_model
from pagedserve.models.resolve import resolve_model_dir, resolve_tokenizer_dir
from tests.hub.conftest import cache_dir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPO = "acme/tiny-llama"


def _sha(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory, tiny_model_dir) -> str:
    """The tiny sharded model plus files the engine must not download."""
    d = tmp_path_factory.mktemp("repo") / "tiny"
    shutil.copytree(tiny_model_dir, d)
    (d / "README.md").write_text("# tiny\n")
    (d / "pytorch_model.bin").write_bytes(b"not needed: safetensors exist")
    (d / "original").mkdir()
    (d / "original" / "params.json").write_text("{}")
    return str(d)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once closed: connection refused


def test_download_selects_config_tokenizer_and_indexed_shards(fake_hub, hub_env, repo_dir):
    fake_hub.add_repo(REPO, repo_dir)
    path = download_model(REPO)
    index = json.load(open(os.path.join(repo_dir, "model.safetensors.index.json")))
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == 2
    got = sorted(os.listdir(path))
    assert got == sorted(["config.json", "generation_config.json", "model.safetensors.index.json", *shards,
                          "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]
                         ), got  # no README, no .bin beside safetensors, nothing under original/
    assert path.startswith(os.path.join(cache_dir(hub_env), "models--acme--tiny-llama", "snapshots"))
    for f in got:
        assert _sha(os.path.join(path, f)) == _sha(os.path.join(repo_dir, f)), f
    # an online restart re-lists the repo but downloads nothing
    before = fake_hub.count("GET", "/resolve/")
    assert download_model(REPO) == path
    assert fake_hub.count("GET", "/resolve/") == before
    # the engine resolves the repo id (also as hf://) to the same snapshot
    assert resolve_model_dir(f"hf://{REPO}") == path


def test_offline_restart_makes_no_request(fake_hub, hub_env, repo_dir, monkeypatch):
    fake_hub.add_repo(REPO, repo_dir)
    path = download_model(REPO)
    fake_hub.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert download_model(REPO) == path
    assert fake_hub.requests == []
    # offline, a repo that was never downloaded: a clear error, still no request
    with pytest.raises(HubError, match=r"model 'acme/other' is not \(completely\) in the cache .*HF_HUB_OFFLINE"):
        download_model("acme/other")
    assert fake_hub.requests == []


def test_network_down_serves_a_complete_cache_with_a_warning(fake_hub, hub_env, repo_dir, monkeypatch, caplog):
    fake_hub.add_repo(REPO, repo_dir)
    path = download_model(REPO)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    with caplog.at_level(logging.WARNING, logger="pagedserve.models.hub"):
        assert download_model(REPO) == path
    assert "cannot be reached" in caplog.text and "from the cache" in caplog.text
    # an incomplete snapshot (a shard lost) is not served
    shard = next(f for f in os.listdir(path) if f.endswith(".safetensors"))
    os.remove(os.path.join(path, shard))
    with pytest.raises(HubError, match="is not \\(completely\\) in the cache .* cannot be reached"):
        download_model(REPO)


def test_network_down_and_no_cache(hub_env, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(HubError) as e:
        download_model(REPO)
    msg = str(e.value)
    assert "model 'acme/tiny-llama'" in msg and "cannot be reached" in msg and "ConnectError" in msg
    assert "HTTPS_PROXY" in msg and cache_dir(hub_env) in msg


def test_unknown_repo(fake_hub, hub_env, monkeypatch):
    with pytest.raises(HubError, match=r"model 'acme/nope' was not found on http://127\.0\.0\.1:\d+ \(HTTP 401\): "
                                       r"check the repository id .* set HF_TOKEN"):
        download_model("acme/nope")
    fake_hub.tokens["good"] = {"*"}
    monkeypatch.setenv("HF_TOKEN", "good")
    with pytest.raises(HubError, match=r"was not found .*\(HTTP 404\).*HF_TOKEN is set"):
        download_model("acme/nope")
    with pytest.raises(HubError, match=r"revision 'v9'.*the revision does not exist.*--revision"):
        fake_hub.add_repo("acme/real", os.path.dirname(os.path.abspath(__file__)))
        download_model("acme/real", "v9")


def test_gated_repo_needs_a_token_with_access(fake_hub, hub_env, repo_dir, monkeypatch):
    fake_hub.add_repo(REPO, repo_dir, gated=True)
    fake_hub.tokens.update({"granted": {REPO}, "other": {"acme/else"}})
    with pytest.raises(HubError, match=r"gated repository and no HF_TOKEN is set \(HTTP 401\): accept its "
                                       r"license at http://127\.0\.0\.1:\d+/acme/tiny-llama .*hfTokenSecret"):
        download_model(REPO)
    monkeypatch.setenv("HF_TOKEN", "other")
    with pytest.raises(HubError, match=r"account of HF_TOKEN has no access to it \(HTTP 403\): request access"):
        download_model(REPO)
    monkeypatch.setenv("HF_TOKEN", "wrong")
    with pytest.raises(HubError, match=r"rejected HF_TOKEN \(HTTP 401, invalid credentials\)"):
        download_model(REPO)
    monkeypatch.setenv("HF_TOKEN", "granted")
    assert os.path.exists(os.path.join(download_model(REPO), "config.json"))


def test_private_repo_without_access_looks_unknown(fake_hub, hub_env, repo_dir):
    fake_hub.add_repo(REPO, repo_dir, private=True)
    with pytest.raises(HubError, match=r"was not found .*\(HTTP 401\).*if it is private or gated, set HF_TOKEN"):
        download_model(REPO)


def test_repo_without_weights(fake_hub, hub_env, repo_dir, tmp_path):
    fake_hub.add_repo(REPO, repo_dir, exclude=("*.safetensors", "*.bin", "model.safetensors.index.json"))
    with pytest.raises(HubError, match=r"model 'acme/tiny-llama': the repository has no loadable weights .*"
                                       r"files: README.md, chat_template.jinja, config.json"):
        download_model(REPO)
    # --load-format dummy needs no weights: config and tokenizer only
    path = resolve_model_dir(REPO, load_format="dummy")
    assert sorted(os.listdir(path)) == ["chat_template.jinja", "config.json", "generation_config.json",
                                        "tokenizer.json", "tokenizer_config.json"]


def test_bin_weights_only_when_no_safetensors(fake_hub, hub_env, repo_dir):
    fake_hub.add_repo(REPO, repo_dir, exclude=("*.safetensors", "model.safetensors.index.json"))
    assert "pytorch_model.bin" in os.listdir(download_model(REPO))


def test_gguf_only_repo(fake_hub, hub_env, tmp_path):
    d = tmp_path / "gguf-repo"
    d.mkdir()
    for name in ("m.Q4_K_M.gguf", "m.Q8_0.gguf"):
        (d / name).write_bytes(b"GGUF" + name.encode())
    fake_hub.add_repo("acme/m-GGUF", str(d))
    with pytest.raises(HubError, match=r"holds GGUF files only: name the one to serve as --model "
                                       r"acme/m-GGUF:FILE.gguf \(files: m.Q4_K_M.gguf, m.Q8_0.gguf\)"):
        download_model("acme/m-GGUF")
    path = download_model("acme/m-GGUF", gguf_file="m.Q8_0.gguf")
    assert path.endswith("m.Q8_0.gguf") and open(path, "rb").read() == b"GGUFm.Q8_0.gguf"
    assert not os.path.exists(os.path.join(os.path.dirname(path), "m.Q4_K_M.gguf"))
    with pytest.raises(HubError, match=r"has no file 'x.gguf' \(its .gguf files: m.Q4_K_M.gguf, m.Q8_0.gguf\)"):
        download_model("acme/m-GGUF", gguf_file="x.gguf")


def test_disk_full_is_reported_before_downloading(fake_hub, hub_env, repo_dir):
    index = json.load(open(os.path.join(repo_dir, "model.safetensors.index.json")))
    shard = sorted(set(index["weight_map"].values()))[0]
    fake_hub.add_repo(REPO, repo_dir, report_sizes={shard: 1 << 60})  # 1 EiB: more than any disk
    with pytest.raises(HubError, match=r"model 'acme/tiny-llama': not enough disk space in the cache .*: it needs "
                                       r"\d+\.\d\d GiB, \d+\.\d\d GiB free; enlarge the volume"):
        download_model(REPO)
    assert fake_hub.count("GET", "-of-00002.safetensors") == 0  # nothing but the index was fetched


def test_tokenizer_repo_and_revision(fake_hub, hub_env, repo_dir, tmp_path):
    fake_hub.add_repo(REPO, repo_dir)
    sha = fake_hub.repos[REPO].commit(REPO)
    tok = resolve_tokenizer_dir(REPO, sha, download_dir=str(tmp_path / "dl"))
    assert tok.endswith(sha) and tok.startswith(str(tmp_path / "dl"))
    assert sorted(os.listdir(tok)) == ["chat_template.jinja", "config.json", "generation_config.json",
                                       "tokenizer.json", "tokenizer_config.json"]
    assert fake_hub.count("GET", ".safetensors") == 0


def test_two_processes_download_one_repo_once(fake_hub, hub_env, repo_dir):
    """Replicas sharing a cache volume: one downloads (under the lock), the other waits and reuses it."""
    fake_hub.add_repo(REPO, repo_dir)
    fake_hub.file_delay = 2.0  # the first holds the lock for > 2 s: the second must wait for it
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO); "
            "from pagedserve.models.hub import download_model; print(download_model(sys.argv[1]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "runtime"), ROOT])}
    procs = [subprocess.Popen([sys.executable, "-c", code, REPO], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    paths = {o[0].strip().splitlines()[-1] for o in outs}
    assert len(paths) == 1, outs
    path = paths.pop()
    files = os.listdir(path)
    assert len(files) == 8
    for f in files:  # every file whole and exactly once on the wire
        assert _sha(os.path.join(path, f)) == _sha(os.path.join(repo_dir, f)), f
        assert fake_hub.count("GET", f"/resolve/{fake_hub.repos[REPO].commit(REPO)}/{f}") == 1, f
    logs = outs[0][1] + outs[1][1]
    assert len(re.findall(r"downloading \d file\(s\) of model 'acme/tiny-llama'", logs)) == 1, logs
    assert "waiting for another process downloading acme/tiny-llama" in logs, logs
    blobs = os.path.join(cache_dir(hub_env), "models--acme--tiny-llama", "blobs")
    assert not [b for b in os.listdir(blobs) if b.endswith(".incomplete")]


def test_disk_filling_up_during_the_download(fake_hub, hub_env, repo_dir, tmp_path):
    """A real full file system (an 8 MiB tmpfs in a user+mount namespace) under a Hub that under-reports
    the sizes, so the check before downloading passes and the write itself fails with ENOSPC."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c", f"mount -t tmpfs -o size=8m tmpfs {mnt}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no user+mount namespaces here: {probe.stderr.strip()[:200]}")
    index = json.load(open(os.path.join(repo_dir, "model.safetensors.index.json")))
    fake_hub.add_repo(REPO, repo_dir, report_sizes={s: 1 for s in set(index["weight_map"].values())})
    big = max(os.path.getsize(os.path.join(repo_dir, s)) for s in set(index["weight_map"].values()))
    assert big > 8 << 20  # one shard does not fit the tmpfs
    code = ("import sys; from pagedserve.models.hub import download_model, HubError\n"
            "try:\n    download_model(sys.argv[1], download_dir=sys.argv[2])\n"
            "except HubError as e:\n    print('HubError:', e)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "runtime"), ROOT])}
    p = subprocess.run(["unshare", "-Urm", "sh", "-c", f'mount -t tmpfs -o size=8m tmpfs {mnt} && exec "$@"', "sh",
                        sys.executable, "-c", code, REPO, str(mnt / "hub")], capture_output=True, text=True, env=env,
                       timeout=120)
    assert "HubError: model 'acme/tiny-llama': not enough disk space in the cache" in p.stdout, p.stdout + p.stderr
    assert "No space left on device" in p.stdout and "enlarge the volume" in p.stdout, p.stdout

