"""The load generator of ``bench serve``: an aiohttp client streaming OpenAI requests, arrivals from
a gamma process (Poisson when burstiness is 1) at a target rate, an optional concurrency cap.

Timing follows vLLM's benchmark: TTFT is the time from sending the request to the first streamed
chunk that carries text; every later text chunk adds one inter-token latency (ITL) sample; E2E is
the time to the last chunk. Output token counts come from the server's usage (include_usage).
"""
from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pagedserve.benchmarks.datasets import SampleRequest


@dataclass
class RequestResult:
    prompt_len: int
    expected_output_len: int
    success: bool = False
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    start: float = 0.0  # seconds since the benchmark started
    chunk_times: list[float] = field(default_factory=list)  # text chunks, seconds since the start
    error: str = ""


@dataclass
class ClientConfig:
    base_url: str
    endpoint: str  # /v1/completions or /v1/chat/completions
    model: str
    temperature: float = 0.0
    ignore_eos: bool = True
    api_key: str | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 6 * 3600.0


def arrival_offsets(n: int, rate: float, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """Send times (s from the start): gamma-distributed gaps with shape ``burstiness`` (1 = Poisson),
    rescaled so the last request goes out at exactly ``n / rate``. ``rate=inf``: all at once."""
    if math.isinf(rate):
        return [0.0] * n
    if rate <= 0 or burstiness <= 0:
        raise ValueError("--request-rate and --burstiness must be > 0")
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n)
    t = np.cumsum(gaps)
    t *= (n / rate) / t[-1]
    return t.tolist()


def _payload(cfg: ClientConfig, req: SampleRequest, tokenizer: Any) -> dict:
    body: dict[str, Any] = {"model": cfg.model, "max_tokens": req.output_len, "temperature": cfg.temperature,
                            "stream": True, "stream_options": {"include_usage": True}}
    if cfg.ignore_eos:
        body["ignore_eos"] = True
    if cfg.endpoint.endswith("/chat/completions"):
        text = req.prompt_text if req.prompt_text is not None else tokenizer.decode(req.prompt_token_ids)
        body["messages"] = [{"role": "user", "content": text}]
    else:
        body["prompt"] = req.prompt_token_ids
    body.update(cfg.extra_body)
    return body


async def send_request(session: Any, cfg: ClientConfig, req: SampleRequest, tokenizer: Any, t_origin: float
                       ) -> RequestResult:
    res = RequestResult(req.prompt_len, req.output_len)
    chat = cfg.endpoint.endswith("/chat/completions")
    headers = {"Content-Type": "application/json"}
    if cfg.api_key:
        headers["Authorization"] = f"Bearer {cfg.api_key}"
    data = json.dumps(_payload(cfg, req, tokenizer))
    st = time.perf_counter()
    res.start = st - t_origin
    last = st
    try:
        async with session.post(cfg.base_url + cfg.endpoint, data=data, headers=headers) as resp:
            if resp.status != 200:
                res.error = f"HTTP {resp.status}: {(await resp.text())[:300]}"
                return res
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data: "):
                    continue
                payload = line[6:]
                if payload == b"[DONE]":
                    break
                now = time.perf_counter()
                obj = json.loads(payload)
                if "error" in obj:
                    res.error = str(obj["error"].get("message"))
                    return res
                choices = obj.get("choices")
                if choices:
                    c = choices[0]
                    text = (c.get("delta") or {}).get("content") if chat else c.get("text")
                    if text:
                        if res.ttft == 0.0:
                            res.ttft = now - st
                        else:
                            res.itl.append(now - last)
                        last = now
                        res.chunk_times.append(now - t_origin)
                if obj.get("usage"):
                    res.output_tokens = int(obj["usage"].get("completion_tokens") or 0)
        res.latency = last - st
        if res.output_tokens == 0:
            res.output_tokens = len(res.chunk_times)  # the server sent no usage: one token per chunk
        res.success = res.ttft > 0.0
        if not res.success:
            res.error = "no text was streamed"
    except Exception as e:  # connection errors, timeouts: a failed request, not a crashed benchmark
        res.error = f"{type(e).__name__}: {e}"
    return res


async def run_load(cfg: ClientConfig, requests: list[SampleRequest], tokenizer: Any, rate: float,
                   burstiness: float, max_concurrency: int | None, seed: int = 0,
                   progress: bool = True) -> tuple[list[RequestResult], float, int]:
    """Send every request on its arrival time; return results, the duration and peak concurrency."""
    import aiohttp

    offsets = arrival_offsets(len(requests), rate, burstiness, seed)
    sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    conn = aiohttp.TCPConnector(limit=max_concurrency or 0, ttl_dns_cache=300, force_close=False)
    timeout = aiohttp.ClientTimeout(total=cfg.timeout_s, sock_read=cfg.timeout_s)
    state = {"in_flight": 0, "peak": 0, "done": 0}
    n = len(requests)
    tick = max(1, n // 10)

    async def one(i: int, req: SampleRequest, session: Any, t0: float) -> RequestResult:
        delay = t0 + offsets[i] - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if sem is not None:
            await sem.acquire()
        state["in_flight"] += 1
        state["peak"] = max(state["peak"], state["in_flight"])
        try:
            return await send_request(session, cfg, req, tokenizer, t0)
        finally:
            state["in_flight"] -= 1
            state["done"] += 1
            if sem is not None:
                sem.release()
            if progress and state["done"] % tick == 0:
                print(f"  {state['done']}/{n} requests done", flush=True)

    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(i, r, session, t0) for i, r in enumerate(requests)))
        duration = time.perf_counter() - t0
    return list(results), duration, state["peak"]
