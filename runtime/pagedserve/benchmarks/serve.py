"""``pagedserve bench serve``: online benchmark of the OpenAI-compatible server.

Targets a running server (``--base-url``) or starts one itself (``--model`` plus ``--server-args``),
sends a seeded dataset (:mod:`.datasets`: random, lognormal, chitchat) with Poisson (gamma)
arrivals at each ``--request-rate`` (``inf`` = all at once) and an optional ``--max-concurrency``,
and reports TTFT, TPOT, ITL and E2E latency (mean, median, percentiles) and throughput with
vLLM's definitions, as a table, a JSON file and a PNG per rate.

Example (vLLM's random dataset)::

    pagedserve bench serve --model /models/llama --server-args "--load-format dummy" \\
        --dataset random --random-input-len 250 --random-output-len 180 --random-range-ratio 0.5 \\
        --num-prompts 400 --request-rate 32 inf --result-dir bench/out
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from pagedserve.benchmarks.datasets import add_dataset_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="online benchmark against the OpenAI-compatible server",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    t = p.add_argument_group("target")
    t.add_argument("--base-url", default=None,
                   help="a running server, e.g. http://127.0.0.1:8000 (default: start one with --model)")
    t.add_argument("--backend", default="openai", choices=["openai", "openai-chat"],
                   help="openai: /v1/completions with token-id prompts; openai-chat: /v1/chat/completions")
    t.add_argument("--endpoint", default=None, help="override the endpoint path")
    t.add_argument("--model", default=None,
                   help="model to start the server with, and the model name in requests "
                        "(default when targeting a server: its first model)")
    t.add_argument("--served-model-name", default=None, help="model name in requests, if not --model")
    t.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    t.add_argument("--server-args", default="", help="extra flags for the started server, one string")
    t.add_argument("--server-startup-timeout", type=float, default=1800.0)
    t.add_argument("--api-key", default=os.environ.get("PAGEDSERVE_API_KEY"))
    add_dataset_args(p)
    w = p.add_argument_group("load")
    w.add_argument("--request-rate", nargs="+", default=["inf"],
                   help="requests per second (several values: one run each, same server); inf = all at once")
    w.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of the arrivals (1 = Poisson)")
    w.add_argument("--max-concurrency", type=int, default=None)
    w.add_argument("--seed", type=int, default=0, help="seed of the arrival times")
    w.add_argument("--temperature", type=float, default=0.0)
    w.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
                   help="generate exactly each request's output length (default: on)")
    w.add_argument("--num-warmups", type=int, default=1)
    w.add_argument("--no-reset-prefix-cache", dest="reset_prefix_cache", action="store_false",
                   help="keep the server's prefix cache between rates (by default it is reset before each "
                        "rate, so a rate does not hit the blocks cached by the one before on the same prompts)")
    o = p.add_argument_group("output")
    o.add_argument("--metric-percentiles", default="99", help="comma-separated, e.g. 50,90,99")
    o.add_argument("--result-dir", default=".")
    o.add_argument("--result-filename", default=None, help="file name prefix (default bench-serve-<dataset>)")
    o.add_argument("--no-plot", action="store_true")
    p.set_defaults(func=run)


# -- server ---------------------------------------------------------------------------------------
def _http(url: str, api_key: str | None, data: bytes | None = None, timeout: float = 10.0) -> bytes:
    """GET (or POST ``data``) with the API key; the response body."""
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                 headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def _get_json(url: str, api_key: str | None, timeout: float = 10.0) -> Any:
    body = _http(url, api_key, timeout=timeout)
    return json.loads(body) if body else None


def _reset_prefix_cache(base_url: str, api_key: str | None) -> None:
    """POST /reset_prefix_cache; a server without the endpoint gets a warning, not a failure."""
    try:
        _http(base_url + "/reset_prefix_cache", api_key, data=b"", timeout=30.0)
    except (urllib.error.URLError, OSError) as e:
        print(f"warning: could not reset the server's prefix cache ({e}); later rates may hit blocks cached "
              "by earlier ones", flush=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LaunchedServer:
    def __init__(self, args: argparse.Namespace, log_path: str) -> None:
        self.port = _free_port()
        cmd = [sys.executable, "-m", "pagedserve.entrypoints.openai.api_server", "--host", "127.0.0.1",
               "--port", str(self.port)]
        if args.model:
            cmd += ["--model", args.model]
        if args.tokenizer:
            cmd += ["--tokenizer", args.tokenizer]
        cmd += shlex.split(args.server_args)
        self.cmd = cmd
        self.log = open(log_path, "wb")
        print(f"starting the server: {shlex.join(cmd)} (log: {log_path})", flush=True)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ready_s: float | None = None  # start to the first /health 200

    def wait_ready(self, timeout: float, api_key: str | None) -> float:
        """Seconds from the start to the first /health 200 (polled every 20 ms: the figure is exact)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.proc.returncode}; see {self.log.name}")
            try:
                _get_json(self.base_url + "/health", api_key, timeout=2)
                self.ready_s = round(time.monotonic() - self.started, 3)
                print(f"server ready in {self.ready_s:.2f} s", flush=True)
                return self.ready_s
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"the server was not ready within {timeout:.0f} s; see {self.log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def _server_counters(base_url: str) -> dict[str, float]:
    """A few server-side counters from /metrics (summed over models)."""
    from prometheus_client.parser import text_string_to_metric_families

    names = ("pagedserve:prompt_tokens_total", "pagedserve:generation_tokens_total",
             "pagedserve:num_preemptions_total", "pagedserve:request_success_total",
             "pagedserve:prefix_cache_hits_total")
    out = dict.fromkeys(names, 0.0)
    try:
        text = _http(base_url + "/metrics", None).decode()
    except OSError:
        return {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in out:
                out[sample.name] += sample.value
    return out


# -- running --------------------------------------------------------------------------------------
def _resolve_tokenizer(args: argparse.Namespace) -> tuple[Any, int | None]:
    """The dataset's tokenizer and the model's vocab size (from config.json when the model is local)."""
    from pagedserve.tokenizer import load_tokenizer

    model_dir = None
    if args.model:
        try:
            from pagedserve.models.resolve import resolve_model_dir

            model_dir = resolve_model_dir(args.model, load_format="dummy")  # a Hub repo: config + tokenizer only
        except (FileNotFoundError, ValueError):
            model_dir = None
    tok_dir = args.tokenizer or model_dir
    if tok_dir is None and args.base_url and not args.model:
        tok_dir = model_dir = _served_model_dir(args)
    if tok_dir is None:
        raise ValueError("the dataset needs the served model's tokenizer: pass --tokenizer DIR (a directory with "
                         "tokenizer.json) or --model NAME_OR_DIR (a local model directory, a .gguf file or "
                         "'default' for the embedded SmolLM2)" + (
                             f"; the server at --base-url {args.base_url} serves a model whose directory is not on "
                             "this machine" if args.base_url and not args.model else ""))
    tokenizer = load_tokenizer(tok_dir)
    vocab = None
    if model_dir and os.path.exists(os.path.join(model_dir, "config.json")):
        with open(os.path.join(model_dir, "config.json")) as fh:
            vocab = json.load(fh).get("vocab_size")
    return tokenizer, vocab or len(tokenizer)


def _served_model_dir(args: argparse.Namespace) -> str | None:
    """With --base-url and no --model: the served model's directory (``root`` in /v1/models), when it
    exists on this machine (the server runs here), so its tokenizer can be used."""
    try:
        models = _get_json(args.base_url.rstrip("/") + "/v1/models", args.api_key)["data"]
    except Exception as e:  # noqa: BLE001 — any failure: the caller explains what to pass
        raise ValueError(f"--base-url {args.base_url}: cannot list the served models ({e}); is the server up? "
                         "Or pass --tokenizer DIR") from None
    want = args.served_model_name
    for m in models:
        root = m.get("root")
        if (want is None or want == m.get("id")) and isinstance(root, str) and os.path.isdir(root):
            return root
    return None


def _rates(values: list[str]) -> list[float]:
    out = []
    for v in values:
        try:
            r = float(v)
        except ValueError:
            raise ValueError(f"--request-rate: {v!r} is not a number or 'inf'") from None
        if not r > 0:
            raise ValueError(f"--request-rate must be > 0, got {v}")
        out.append(r)
    return out


def run(args: argparse.Namespace) -> int:
    from pagedserve.benchmarks.datasets import requests_from_args
    from pagedserve.benchmarks.serve_client import ClientConfig, run_load
    from pagedserve.benchmarks.serve_metrics import compute_metrics, format_report, plot

    rates = _rates(args.request_rate)
    percentiles = [float(x) for x in args.metric_percentiles.split(",") if x.strip()]
    tokenizer, vocab = _resolve_tokenizer(args)
    requests = requests_from_args(args, vocab, tokenizer)
    os.makedirs(args.result_dir, exist_ok=True)
    prefix = args.result_filename or f"bench-serve-{args.dataset}"
    server = None
    base_url = args.base_url
    if base_url is None:
        if not args.model:
            raise ValueError("give --base-url (a running server) or --model (to start one)")
        server = LaunchedServer(args, os.path.join(args.result_dir, f"{prefix}-server.log"))
        base_url = server.base_url
    try:
        if server is not None:
            server.wait_ready(args.server_startup_timeout, args.api_key)
        base_url = base_url.rstrip("/")
        model = args.served_model_name
        if model is None:
            models = _get_json(base_url + "/v1/models", args.api_key)["data"]
            model = models[0]["id"]
        endpoint = args.endpoint or ("/v1/chat/completions" if args.backend == "openai-chat" else "/v1/completions")
        cfg = ClientConfig(base_url, endpoint, model, temperature=args.temperature, ignore_eos=args.ignore_eos,
                           api_key=args.api_key)
        print(f"{len(requests)} {args.dataset} requests: {sum(r.prompt_len for r in requests)} prompt tokens, "
              f"{sum(r.output_len for r in requests)} output tokens requested; model {model!r} at {base_url}")
        if args.num_warmups > 0:
            warm = asyncio.run(run_load(cfg, requests[:1] * args.num_warmups, tokenizer, float("inf"), 1.0, None,
                                        progress=False))
            bad = [r.error for r in warm[0] if not r.success]
            if bad:
                raise RuntimeError(f"the warm-up request failed: {bad[0]}")
        for rate in rates:
            if args.reset_prefix_cache:
                _reset_prefix_cache(base_url, args.api_key)
            before = _server_counters(base_url)
            print(f"request rate {rate} req/s, burstiness {args.burstiness}, max concurrency "
                  f"{args.max_concurrency or 'unlimited'}", flush=True)
            results, duration, peak = asyncio.run(run_load(cfg, requests, tokenizer, rate, args.burstiness,
                                                           args.max_concurrency, seed=args.seed))
            after = _server_counters(base_url)
            m = compute_metrics(results, duration, percentiles, peak)
            title = f"{args.dataset}, {len(requests)} prompts, rate {rate:g} req/s"
            print(format_report(m, "Serving Benchmark Result: " + title, percentiles), flush=True)
            tag = "inf" if rate == float("inf") else f"{rate:g}"
            stem = os.path.join(args.result_dir, f"{prefix}-rate{tag}")
            record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      "backend": args.backend, "endpoint": endpoint, "base_url": base_url, "model_id": model,
                      "tokenizer_id": args.tokenizer or args.model, "dataset": args.dataset,
                      "num_prompts": len(requests), "dataset_seed": args.dataset_seed,
                      "random_input_len": args.random_input_len, "random_output_len": args.random_output_len,
                      "random_range_ratio": args.random_range_ratio, "random_prefix_len": args.random_prefix_len,
                      "request_rate": "inf" if rate == float("inf") else rate, "burstiness": args.burstiness,
                      "max_concurrency": args.max_concurrency, "temperature": args.temperature,
                      "ignore_eos": args.ignore_eos, "percentiles": percentiles,
                      "server_cmd": server.cmd if server else None,
                      "server_ready_s": server.ready_s if server else None,
                      "server_counters_delta": {k: after.get(k, 0) - before.get(k, 0) for k in after},
                      **m}
            with open(stem + ".json", "w") as fh:
                json.dump(record, fh, indent=1)
            drew = False if args.no_plot else plot(m, results, stem + ".png", title)
            print(f"wrote {stem}.json" + (f" and {stem}.png" if drew else ""), flush=True)
            failed = [e for e in m["errors"] if e]
            if failed:
                print(f"{len(failed)} request(s) failed, e.g.: {failed[0]}", file=sys.stderr)
    finally:
        if server is not None:
            server.stop()
    return 0
