"""``pagedserve serve --model ORG/NAME`` through the fake Hub: the port answers 503 with the phase while
the model downloads and loads, then the real ``openai`` client gets "Paris"; a restart with
``HF_HUB_OFFLINE=1`` serves from the cache without one Hub request; a 404 ends the process with the
message as its last line and its termination message."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.server.server_proc import COMMON_ARGS, free_port, request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPO = "acme/SmolLM2-135M-Instruct"


def _serve(args: list[str], env: dict[str, str], log) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "pagedserve.entrypoints.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           *COMMON_ARGS, *args]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **env, "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "runtime"),
                                                                                     ROOT])})
    return proc, port


class _Port:
    def __init__(self, port: int) -> None:
        self.port = port


def _phases(proc: subprocess.Popen, port: int, log_path, timeout: float = 240) -> list[tuple[int, dict | str]]:
    """Poll /health until 200: every (status, body) seen, in order."""
    seen: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, open(log_path).read()[-4000:]
        try:
            status, body = request(_Port(port), "GET", "/health", timeout=5)
        except OSError:
            time.sleep(0.05)
            continue
        seen.append((status, body))
        if status == 200:
            return seen
        time.sleep(0.1)
    raise TimeoutError(seen)


def _chat(port: int, model: str) -> str:
    import openai

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
    out = client.chat.completions.create(model=model, temperature=0, max_tokens=12,
                                         messages=[{"role": "user", "content": "What is the capital of France?"}])
    return out.choices[0].message.content or ""


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_serve_hub_model_reports_phases_then_answers_and_restarts_offline(fake_hub, hub_env, smollm2_dir,
                                                                          tmp_path):
    fake_hub.add_repo(REPO, smollm2_dir)
    fake_hub.file_delay = 3.0  # a slow Hub: /health must say "downloading" meanwhile
    log_path = tmp_path / "first.log"
    with open(log_path, "wb") as log:
        proc, port = _serve(["--model", REPO], hub_env, log)
        try:
            seen = _phases(proc, port, log_path)
            phases = [b.get("status") if isinstance(b, dict) else None for _, b in seen]
            phases = [p for i, p in enumerate(phases) if i == 0 or p != phases[i - 1]]
            assert phases[-1] is None and seen[-1][0] == 200, seen
            assert "downloading" in phases and "loading" in phases, seen
            assert "loading" in phases[phases.index("downloading"):], seen  # download, then load, then ready
            down = [b for s, b in seen if isinstance(b, dict) and b.get("status") == "downloading"][-1]
            assert down["error"]["code"] == "starting" and down["downloads"][0]["model"] == REPO, down
            assert down["downloads"][0]["total_bytes"] == sum(
                os.path.getsize(os.path.join(smollm2_dir, f)) for f in os.listdir(smollm2_dir)), down
            assert "downloading from the Hugging Face Hub" in down["message"], down
            assert "Paris" in _chat(port, REPO)
        finally:
            _stop(proc)
    assert proc.returncode == 0, open(log_path).read()[-3000:]

    # restart offline on the same cache: served from it, and the Hub sees no request at all
    fake_hub.requests.clear()
    log_path = tmp_path / "offline.log"
    with open(log_path, "wb") as log:
        proc, port = _serve(["--model", REPO, "--served-model-name", "smol"], {**hub_env, "HF_HUB_OFFLINE": "1"},
                            log)
        try:
            seen = _phases(proc, port, log_path)
            assert "downloading" not in [b.get("status") for _, b in seen if isinstance(b, dict)], seen
            assert "Paris" in _chat(port, "smol")
        finally:
            _stop(proc)
    assert fake_hub.requests == []


def test_unknown_repo_ends_with_the_message_and_termination_log(fake_hub, hub_env, tmp_path):
    term = tmp_path / "termination-log"
    p = subprocess.run([sys.executable, "-m", "pagedserve.entrypoints.openai.api_server", "--host", "127.0.0.1",
                        "--port", str(free_port()), "--model", "acme/missing"], capture_output=True, text=True,
                       timeout=120, env={**os.environ, **hub_env, "PAGEDSERVE_TERMINATION_LOG": str(term),
                                         "PYTHONPATH": os.path.join(ROOT, "runtime")})
    assert p.returncode == 2, p.stderr[-3000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("pagedserve serve: error: model 'acme/missing' was not found on http://127.0.0.1:"), last
    assert "(HTTP 401): check the repository id" in last and "HF_TOKEN" in last, last
    assert term.read_text() == last.removeprefix("pagedserve serve: error: ")
