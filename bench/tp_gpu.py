"""Tensor parallelism on GPUs (run on the device machine, 2+ GPUs; NVLink multicast stays off).

(a) greedy equality TP=1 vs TP=N on small random models of every architecture, float32 (must be
    identical; chunked prefill, copy-on-write forks, async scheduling, forced preemption for one);
(b) the big model (default the Llama-3.1-8B shape, dummy bf16 weights) at TP=1 and TP=N: greedy
    agreement between the two, batch-1 TTFT/TPOT (512-token prompt, 128 new tokens) and offline
    throughput on 256 lognormal prompts, each against the weight-read floor per GPU (weight bytes
    per rank / device copy bandwidth measured in the same run); TP=1 is skipped when the model does
    not fit one GPU (70B);
(c) NCCL all-reduce latency at the sizes of a step (eager and inside a CUDA graph), and the share
    of a batch-1 step they explain (what a custom all-reduce could win);
(d) a killed worker rank surfaces as a clear error, not a hang (the NCCL abort path).

JSON (written after every section) + a printed table.

  PYTHONPATH=runtime python bench/tp_gpu.py --tp 2 --out bench/out/tp2.json                  # 2 GPUs, < 8 min
  PYTHONPATH=runtime python bench/tp_gpu.py --tp 4 --model bench/configs/llama-3.1-70b \\
      --out bench/out/tp4_70b.json                                                            # 4 GPUs
  PYTHONPATH=runtime python bench/tp_gpu.py --tp 1 --pp 2 --out bench/out/pp2.json            # 2 GPUs, PP=2

``--pp N``: the parallel engines run N pipeline stages of ``--tp`` ranks each (docs/pipeline_parallel.md);
the reference stays one GPU. The (c) all-reduce section is skipped then.
"""
from __future__ import annotations

import os

os.environ.update({"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"})

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
from gpu_models import ARCH_CFG, make_tiny  # noqa: E402  (bench/gpu_models.py)



def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


PP = 1  # --pp: pipeline stages of the parallel engines
DEVICE = "cuda"  # --device cpu: a smoke test of this script on CPU (gloo), with a small --model


def free_engine(llm) -> None:
    llm.shutdown()  # workers stopped; one GPU's weights, KV cache and graphs released
    gc.collect()


def greedy(llm, prompts: list[list[int]], max_tokens: int, n2: bool = False) -> list[list[int]]:
    from pagedserve import SamplingParams

    params = [SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True) for _ in prompts]
    if n2:
        params[1] = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, n=2)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [c.token_ids for o in outs for c in o.outputs]


# -- (a) -------------------------------------------------------------------------------------------------
def equality(tp: int, archs: list[str]) -> list[dict]:
    from pagedserve import LLM

    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(10, 4000, (n,), generator=g).tolist() for n in (1, 5, 16, 17, 100, 333, 700, 64)]
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for i, arch in enumerate(archs):
            d = make_tiny(root, arch, i)
            settings = [("chunked", dict(max_num_batched_tokens=128))]
            if arch == "llama":
                settings += [("preempt", dict(num_gpu_blocks_override=60, max_num_batched_tokens=256)),
                             ("sync", dict(max_num_batched_tokens=128, async_scheduling=False))]
            for name, kw in settings:
                t0 = time.time()
                res = {}
                if PP > 1:
                    kw.pop("async_scheduling", None)  # pipeline stages schedule synchronously
                for key, (size, pp) in enumerate(((1, 1), (tp, PP))):
                    llm = LLM(d, dtype="float32", device=DEVICE, tensor_parallel_size=size, pipeline_parallel_size=pp,
                              skip_tokenizer_init=True, use_tqdm=False, max_model_len=2048, kv_cache_memory=1 << 30,
                              max_num_seqs=16, **kw)
                    res[key] = greedy(llm, prompts, 48, n2=True)
                    graphs = llm.llm_engine.core.runner.graphs is not None
                    free_engine(llm)
                res = {1: res[0], tp: res[1]}
                same = res[1] == res[tp]
                first_diff = None
                if not same:
                    for j, (a, b) in enumerate(zip(res[1], res[tp])):
                        if a != b:
                            k = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                            first_diff = {"sequence": j, "position": k}
                            break
                rows.append({"arch": arch, "setting": name, "identical": same, "first_diff": first_diff,
                             "cuda_graphs": graphs, "seconds": round(time.time() - t0, 1)})
                log(f"(a) {arch:14s} {name:8s} TP=1 vs TP={tp} float32: {'IDENTICAL' if same else 'DIFFERENT'} "
                    f"{first_diff or ''} ({time.time() - t0:.0f} s)")
    return rows


# -- (b) -------------------------------------------------------------------------------------------------
def label(size: int, pp: int) -> str:
    return f"tp{size}" + (f"pp{pp}" if pp > 1 else "")


def big_model_in_child(size: int, bw_gbs: float, pp: int = 1) -> dict:
    """``big_model`` in a fresh process (this script with ``--big-size``), its output passed through."""
    argv = [a for a in sys.argv[1:]]
    env = dict(os.environ, TP_GPU_BW=str(bw_gbs))
    env.pop("PAGEDSERVE_ALLOW_LATER_TP_ENGINE", None)  # the child's engine is the first of its process
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv, "--big-size", str(size),
                          "--big-pp", str(pp)], env=env,
                         stdout=subprocess.PIPE, text=True)
    result = None
    assert p.stdout is not None
    for line in p.stdout:
        if line.startswith("BIGRESULT "):
            result = json.loads(line[len("BIGRESULT "):])
        else:
            print(line, end="", flush=True)
    p.wait()
    if result is None:
        raise RuntimeError(f"the TP={size} run exited with code {p.returncode} without a result")
    return result


def big_model(model: str, tp: int, bw_gbs: float, args, pp: int = 1) -> dict:
    from pagedserve import LLM, SamplingParams
    from pagedserve.benchmarks.datasets import lognormal_requests
    from pagedserve.benchmarks.latency import measure

    t0 = time.time()
    kw = dict(max_model_len=args.max_model_len) if args.max_model_len else {}
    if args.quantization:
        kw["quantization"] = args.quantization
    llm = LLM(model, load_format="dummy", dtype="bfloat16" if DEVICE == "cuda" else "float32", device=DEVICE,
              tensor_parallel_size=tp, pipeline_parallel_size=pp,
              skip_tokenizer_init=True, use_tqdm=False, **kw)
    core = llm.llm_engine.core
    ready = time.time() - t0
    # per GPU of a stage; a token passes every stage in turn, so the floor is the whole model / tp
    weight_bytes = sum(i["weight_bytes"] for i in core.executor.collective_rpc("info")) // (tp * pp)
    floor_ms = weight_bytes * pp / (bw_gbs * 1e9) * 1e3
    out: dict = {"tp": tp, "pp": pp, "ready_s": round(ready, 1),
                 "graph_capture_s": round(core.graph_capture_seconds, 1),
                 "weight_bytes_per_rank": weight_bytes, "weight_read_floor_ms": floor_ms,
                 "num_gpu_blocks": core.config.cache_config.num_gpu_blocks}
    log(f"(b) TP={tp}: ready in {ready:.0f} s, {weight_bytes / 1e9:.2f} GB of weights per GPU, "
        f"floor {floor_ms:.2f} ms/token, {out['num_gpu_blocks']} KV blocks")
    vocab = core.config.model_config.arch.vocab_size
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(100, vocab - 100, (n,), generator=g).tolist() for n in (7, 64, 300, 1000, 33, 128, 5, 512)]
    out["greedy"] = greedy(llm, prompts, 32)
    # batch-1 latency
    prompt = torch.randint(100, vocab - 100, (args.input_len,), generator=g).tolist()
    measure(llm.llm_engine, prompt, 8, 1)  # warm-up
    runs = [measure(llm.llm_engine, prompt, args.output_len, 1) for _ in range(3)]
    out["ttft_ms"] = statistics.median(r[0] for r in runs) * 1e3
    out["tpot_ms"] = statistics.median(r[1] for r in runs) * 1e3
    out["tpot_over_floor"] = out["tpot_ms"] / floor_ms
    log(f"(b) TP={tp}: batch 1 TTFT {out['ttft_ms']:.1f} ms, TPOT {out['tpot_ms']:.3f} ms "
        f"({out['tpot_over_floor']:.2f}x the floor {floor_ms:.2f} ms)")
    # throughput (a watcher logs progress, so a stall shows where it is)
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(15):
            st = core.scheduler.get_stats()
            log(f"(b) TP={tp}: ... running {st.num_running}, waiting {st.num_waiting}, KV {st.kv_cache_usage:.2f}, "
                f"path {core.runner.last_path}")
    threading.Thread(target=watch, daemon=True).start()
    reqs = lognormal_requests(args.num_prompts, vocab, seed=0)
    warm = [SamplingParams(temperature=1.0, max_tokens=8, ignore_eos=True)] * 4
    llm.generate([{"prompt_token_ids": r.prompt_token_ids} for r in reqs[:4]], warm, use_tqdm=False)
    params = [SamplingParams(temperature=1.0, top_p=1.0, max_tokens=r.output_len, ignore_eos=True) for r in reqs]
    llm.reset_prefix_cache()  # the timed run must not hit the warm-up's blocks
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": r.prompt_token_ids} for r in reqs], params, use_tqdm=False)
    elapsed = time.perf_counter() - t1
    n_out = sum(len(o.outputs[0].token_ids) for o in outs)
    n_in = sum(len(r.prompt_token_ids) for r in reqs)
    out.update(num_prompts=len(reqs), input_tokens=n_in, output_tokens=n_out, elapsed_s=elapsed,
               output_tok_s=n_out / elapsed, total_tok_s=(n_in + n_out) / elapsed, requests_per_s=len(reqs) / elapsed,
               num_preemptions=core.scheduler.num_preemptions)
    stop.set()
    log(f"(b) TP={tp}: {len(reqs)} lognormal prompts: {out['output_tok_s']:.0f} output tok/s, "
        f"{out['total_tok_s']:.0f} total tok/s ({elapsed:.1f} s, {out['num_preemptions']} preemptions)")
    # (c) all-reduce latency on this group, at the sizes of a step
    if tp > 1 and pp == 1:
        hidden = core.config.model_config.arch.hidden_size
        numels = [hidden * b for b in (1, 8, 64, 256, 2048)]
        res = core.executor.collective_rpc("bench_all_reduce", numels, 50)
        kind = "graph_us" if res[0]["graph_us"] else "eager_us"  # no graphs on CPU
        out["all_reduce_us"] = {"numels": numels, "eager_rank0": res[0]["eager_us"], "graph_rank0": res[0]["graph_us"],
                                "graph_max_over_ranks": {n: max(r[kind][n] for r in res) for n in numels}}
        layers = core.config.model_config.arch.num_layers
        per_token = (2 * layers + 1) * out["all_reduce_us"]["graph_max_over_ranks"][numels[0]] / 1e3
        out["batch1_all_reduce_ms"] = per_token
        log(f"(c) TP={tp}: all-reduce of {numels[0]} bf16 (batch 1) {res[0][kind][numels[0]]:.1f} us in a graph "
            f"({res[0]['eager_us'][numels[0]]:.1f} us eager); x{2 * layers + 1} per token = {per_token:.2f} ms of the "
            f"{out['tpot_ms']:.2f} ms TPOT")
        for n in numels:
            log(f"(c)    {n * 2 / 1024:9.0f} KiB: graph {res[0]['graph_us'].get(n, float('nan')):8.1f} us, "
                f"eager {res[0]['eager_us'][n]:8.1f} us")
    out["ranks"] = core.executor.collective_rpc("info")
    free_engine(llm)
    return out


def fits_one_gpu(model: str) -> bool:
    """Whether the bf16 weights take under 75% of one GPU (from the HF config.json fields)."""
    with open(os.path.join(model, "config.json")) as fh:
        c = json.load(fh)
    h, i, L, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    heads = c["num_attention_heads"]
    kv_heads, head_dim = c.get("num_key_value_heads") or heads, c.get("head_dim") or h // heads
    attn = h * (heads + 2 * kv_heads) * head_dim + heads * head_dim * h
    params = L * (attn + 3 * h * i) + 2 * v * h
    return params * 2 < 0.75 * torch.cuda.get_device_properties(0).total_memory


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    same = sum(x == y for s, t in zip(a, b) for x, y in zip(s, t))
    return same / max(1, sum(len(s) for s in a))


# -- (d) -------------------------------------------------------------------------------------------------
def death_check(tp: int) -> dict:
    from pagedserve import LLM

    with tempfile.TemporaryDirectory() as root:
        d = make_tiny(root, "llama", 0)
        llm = LLM(d, dtype="float32", device=DEVICE, tensor_parallel_size=tp, pipeline_parallel_size=PP,
                  skip_tokenizer_init=True, use_tqdm=False, max_model_len=2048, kv_cache_memory=1 << 30,
                  max_num_seqs=16)
        greedy(llm, [[5, 6, 7]], 4)
        ex = llm.llm_engine.core.executor
        pid = ex.worker_pids[-1]
        os.kill(pid, signal.SIGKILL)
        t0 = time.time()
        err = None
        try:
            for _ in range(20):  # a long generation: the death lands inside steps
                greedy(llm, [[5, 6, 7]] * 4, 200)
        except RuntimeError as e:
            err = str(e)
        raised_s = time.time() - t0
        t1 = time.time()
        llm.shutdown()
        out = {"raised": err is not None, "error": err, "raised_after_s": round(raised_s, 2),
               "shutdown_s": round(time.time() - t1, 2)}
        del llm
        gc.collect()
    log(f"(d) killed rank {tp - 1} (pid {pid}): {'RuntimeError' if err else 'NO ERROR'} after {raised_s:.1f} s: "
        f"{(err or '')[:160]}; shutdown {out['shutdown_s']} s")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--model", default=os.path.join(HERE, "configs", "llama-3.1-8b"))
    ap.add_argument("--archs", nargs="*", default=list(ARCH_CFG))
    ap.add_argument("--num-prompts", type=int, default=256)
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--max-model-len", type=int, default=None)
    ap.add_argument("--quantization", default=None, help="the big-model engines' --quantization (e.g. fp8)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["equality", "big", "death"])
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-tp1", action="store_true", help="skip the TP=1 reference in the big-model section")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: smoke-test this script (gloo)")
    ap.add_argument("--pp", type=int, default=1, help="pipeline stages of the parallel engines (ranks: tp x pp)")
    ap.add_argument("--big-size", type=int, default=None, help=argparse.SUPPRESS)  # one big-model run, then exit
    ap.add_argument("--big-pp", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--in-process", action="store_true",
                    help="big-model engines in this process after the others (reproduces the later-engine stall; "
                         "needs PAGEDSERVE_ALLOW_LATER_TP_ENGINE=1)")
    args = ap.parse_args()
    global DEVICE, PP
    PP = args.pp
    if args.big_size is not None:  # a child process: its engine is the first of its process
        DEVICE = args.device
        res = big_model(args.model, args.big_size, float(os.environ["TP_GPU_BW"]), args, args.big_pp)
        print("BIGRESULT " + json.dumps(res), flush=True)
        return 0
    # the small equality / killed-worker engines share this process (they pass there; a big TP engine
    # after another engine stalled, executor/tp_process.check_later_tp_engine): big runs get their own
    os.environ["PAGEDSERVE_ALLOW_LATER_TP_ENGINE"] = "1"
    DEVICE = args.device
    if float(os.environ.get("PAGEDSERVE_DEBUG_STACKS_S") or 0) > 0:  # a stall prints every process's stacks
        import faulthandler

        faulthandler.dump_traceback_later(float(os.environ["PAGEDSERVE_DEBUG_STACKS_S"]), repeat=True)
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    n_gpus = torch.cuda.device_count() if DEVICE == "cuda" else args.tp * args.pp
    if n_gpus < args.tp * args.pp:
        print(f"needs {args.tp * args.pp} GPUs, {n_gpus} visible", file=sys.stderr)
        return 2
    from pagedserve.benchmarks.latency import copy_bandwidth_gbs

    cuda = DEVICE == "cuda"
    result: dict = {"tp": args.tp, "pp": args.pp, "model": args.model,
                    "gpus": [torch.cuda.get_device_name(i) for i in range(n_gpus)] if cuda else ["cpu"] * n_gpus,
                    "torch": torch.__version__, "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
                    "env": {k: os.environ.get(k) for k in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST",
                                                           "NVSHMEM_DISABLE_NVLS")}}

    def save() -> None:
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as fh:
                json.dump(result, fh, indent=2)

    t_start = time.time()
    result["copy_bandwidth_gbs"] = bw = copy_bandwidth_gbs() if cuda else 10.0
    log(f"copy bandwidth {bw:.0f} GB/s (GPU 0); {n_gpus} x {result['gpus'][0]}, torch {torch.__version__}, "
        f"NCCL {result['nccl']}")
    ok = True
    if "equality" not in args.skip:
        try:
            result["equality"] = equality(args.tp, args.archs)
            ok &= all(r["identical"] for r in result["equality"])
        except Exception:
            result["equality_error"] = traceback.format_exc()
            log(result["equality_error"])
            ok = False
        save()
    if "big" not in args.skip:
        runs = ([(1, 1)] if not args.no_tp1 and (not cuda or fits_one_gpu(args.model)) else []) + [(args.tp, args.pp)]
        result["big"] = {}
        for size, pp in runs:
            key = label(size, pp)
            try:
                child = cuda and not args.in_process
                result["big"][key] = (big_model_in_child(size, bw, pp) if child
                                      else big_model(args.model, size, bw, args, pp))
            except Exception:
                result["big"][f"{key}_error"] = traceback.format_exc()
                log(result["big"][f"{key}_error"])
                ok = False
            save()
        big = result["big"]
        par = label(args.tp, args.pp)
        if "tp1" in big and par in big and par != "tp1":
            result["big"]["greedy_agreement"] = agreement(big["tp1"]["greedy"], big[par]["greedy"])
            log(f"(b) greedy agreement TP=1 vs {par} (bf16, dummy weights): "
                f"{result['big']['greedy_agreement']:.1%} of positions")
        save()
    if "death" not in args.skip:
        try:
            result["death"] = death_check(args.tp)
            ok &= result["death"]["raised"]
        except Exception:
            result["death_error"] = traceback.format_exc()
            log(result["death_error"])
            ok = False
        save()
    result["wall_s"] = time.time() - t_start
    result["ok"] = ok
    save()
    print_table(result)
    return 0 if ok else 1


def print_table(result: dict) -> None:
    print("\n== tensor parallelism:", result["model"], "==")
    for r in result.get("equality", []):
        print(f"  equality {r['arch']:14s} {r['setting']:8s} TP=1 vs TP={result['tp']}: "
              f"{'identical' if r['identical'] else 'DIFFERENT ' + str(r['first_diff'])}")
    big = result.get("big", {})
    rows = [(k, v) for k, v in big.items() if isinstance(v, dict) and "tp" in v]
    if rows:
        print(f"  {'':6s} {'GB/GPU':>7s} {'floor ms':>9s} {'TPOT ms':>8s} {'x floor':>8s} {'TTFT ms':>8s} "
              f"{'out tok/s':>10s} {'tot tok/s':>10s} {'AR ms/tok':>9s}")
        for k, v in rows:
            print(f"  {k:6s} {v['weight_bytes_per_rank'] / 1e9:7.2f} {v['weight_read_floor_ms']:9.2f} "
                  f"{v['tpot_ms']:8.3f} {v['tpot_over_floor']:8.2f} {v['ttft_ms']:8.1f} {v['output_tok_s']:10.0f} "
                  f"{v['total_tok_s']:10.0f} {v.get('batch1_all_reduce_ms', 0):9.2f}")
    if "greedy_agreement" in big:
        print(f"  greedy agreement TP=1 vs {label(result['tp'], result.get('pp', 1))} (bf16 dummy): "
              f"{big['greedy_agreement']:.1%}")
    if "death" in result:
        d = result["death"]
        print(f"  killed worker: {'clear error' if d['raised'] else 'NO ERROR'} after {d['raised_after_s']} s, "
              f"shutdown {d['shutdown_s']} s")
    print(f"  ok: {result.get('ok')}, wall {result.get('wall_s', 0):.0f} s")


if __name__ == "__main__":
    raise SystemExit(main())
