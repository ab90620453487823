"""The named benchmark scenarios and groups run by ``python -m bench`` (``bench/run.py``).

A scenario is a few steps; a step is one command (run from the repository root with
``PYTHONPATH=runtime``) that writes JSON files into its work folder ``{work}``; the runner gathers
them into one JSON per scenario. Placeholders in a command: ``{py}`` (the Python running the
runner), ``{work}``, ``{model}`` (the Llama-3.1-8B config, dummy weights), ``{model_tok}`` (the same
config with the Llama 3 tokenizer, made by ``python -m bench --prepare``: ``bench serve`` needs a
tokenizer), ``{tiny}`` (a tiny Llama config for the CPU smoke scenario).

The arguments are the ones of the GPU runs recorded in ``bench/RESULTS.md`` (runs 1-34).
"""
from __future__ import annotations

from dataclasses import dataclass, field

MODEL = "bench/configs/llama-3.1-8b"
MODEL_TOK = "bench/carry/llama-3.1-8b-tok"
TINY = "bench/configs/tiny-llama"
MIXTRAL = "bench/configs/mixtral-8x7b"
QWEN3_MOE = "bench/configs/qwen3-30b-a3b"
#: the router benchmark's chitchat conversations, made by ``python -m bench --prepare`` (bench/carry.py)
CHITCHAT = "bench/carry/chitchat/conversations.json"
#: a plain Llama 3 chat template: the carried Llama 3 tokenizer has none
LLAMA3_CHAT_TEMPLATE = "bench/configs/llama3-chat.jinja"

#: the engine flags of every Llama-3.1-8B run: random ("dummy") weights in bf16
DUMMY = ("--load-format", "dummy", "--dtype", "bfloat16")
#: the tiny random Llama of the CPU smoke scenario, with a 16 MiB KV cache
TINY_CPU = ("--model", "{tiny}", "--load-format", "dummy", "--dtype", "float32", "--device", "cpu",
            "--kv-cache-memory", str(16 << 20))
#: vLLM's random dataset of the serving runs: 400 prompts, input 250 / output 180 tokens +-50%
RANDOM_400 = ("--dataset", "random", "--random-input-len", "250", "--random-output-len", "180",
              "--random-range-ratio", "0.5", "--num-prompts", "400")
#: each of the router benchmark's 3 replicas of the Llama-3.1-8B shape on one GPU (80 GB): 15 GiB of
#: weights and an explicit 4 GiB KV cache (32k tokens). Not --gpu-memory-utilization: the memory
#: profile (worker/memory.py) counts the other replicas' memory as used, so a second replica started
#: beside a first finds no room under the same fraction (docs/router.md, "Benchmark (GPU)").
ROUTER_REPLICA = ("--model", "{model_tok}", *DUMMY, "--kv-cache-memory", str(4 << 30), "--max-model-len", "4096",
                  "--max-num-batched-tokens", "4096", "--max-num-seqs", "16", "--chat-template", LLAMA3_CHAT_TEMPLATE)
#: the engine flags of each weight / KV-cache variant
VARIANTS = {"": (), "-fp8": ("--quantization", "fp8"), "-kv8": ("--kv-cache-dtype", "fp8"),
            "-fp8-kv8": ("--quantization", "fp8", "--kv-cache-dtype", "fp8")}


@dataclass(frozen=True)
class Step:
    """One command. ``timeout_s`` is its limit on one H200 (fresh machine, cold Triton cache)."""

    name: str
    argv: tuple[str, ...]
    timeout_s: int
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    name: str
    help: str
    steps: tuple[Step, ...]
    gpus: int = 1  # 0: runs on CPU


@dataclass(frozen=True)
class Group:
    name: str
    help: str
    scenarios: tuple[str, ...]
    budget_s: int | None = None  # the runner stops starting steps past this wall time


def _py(*module_args: str) -> tuple[str, ...]:
    return ("{py}", *module_args)


def throughput(*args: str) -> tuple[str, ...]:
    return _py("-m", "pagedserve.benchmarks.throughput", *args, "--output-json", "{work}/throughput.json")


def serve(server_flags: tuple[str, ...], rates: tuple[str, ...] = ("32", "inf")) -> tuple[str, ...]:
    """``pagedserve bench serve`` starting its own server (one per scenario), the prefix cache reset
    before each rate."""
    return _py("-m", "pagedserve.entrypoints.cli", "bench", "serve", "--model", "{model_tok}",
               "--server-args", " ".join(DUMMY + server_flags), *RANDOM_400, "--request-rate", *rates,
               "--metric-percentiles", "50,90,99", "--no-plot", "--result-dir", "{work}")


def _scenarios() -> list[Scenario]:
    s: list[Scenario] = [
        Scenario("smoke", "CPU: a tiny random Llama, offline throughput (8 random requests) and batch-1 latency, "
                 "the kernel checks through the Triton interpreter; run by tests/bench so the runner cannot rot", (
                     Step("throughput", throughput(*TINY_CPU, "--dataset", "random", "--random-input-len", "24",
                                                   "--random-output-len", "8", "--num-prompts", "8",
                                                   "--warmup-prompts", "1", "--trace-json", "{work}/trace.json"),
                          180),
                     Step("latency", _py("-m", "pagedserve.benchmarks.latency", *TINY_CPU, "--input-len", "16",
                                         "--output-len", "8", "--batch-sizes", "1", "--iters", "1",
                                         "--output-json", "{work}/latency.json"), 180),
                     Step("kernels", _py("-m", "bench.kernels", "--cpu-smoke", "--out", "{work}/kernels.json"), 180)),
                 gpus=0),
        Scenario("engine-check", "greedy outputs of Triton + CUDA graphs equal the torch reference (float32 "
                 "identical, 5 architectures; bf16 agreement reported)",
                 (Step("engine_check", _py("bench/gpu_engine_check.py", "--out", "{work}/engine_check.json"), 150),)),
        Scenario("kernel-tests", "tests/kernels compiled and run on the GPU",
                 (Step("pytest", _py("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/kernels",
                                     "--junitxml", "{work}/junit.xml"), 420),)),
        Scenario("latency", "TTFT / TPOT at batch 1, 4, 16 (512-token prompt, 128 new tokens) vs the weight-read "
                 "floor", (Step("latency", _py("-m", "pagedserve.benchmarks.latency", "--model", "{model}", *DUMMY,
                                              "--batch-sizes", "1", "4", "16", "--output-len", "128",
                                              "--output-json", "{work}/latency.json"), 90),)),
        Scenario("offline-256", "offline throughput, 256 lognormal requests, two timed runs",
                 (Step("throughput", throughput("--model", "{model}", *DUMMY, "--num-prompts", "256",
                                                "--repeat", "2"), 90),)),
        Scenario("offline-1000", "offline throughput, 1,000 lognormal requests",
                 (Step("throughput", throughput("--model", "{model}", *DUMMY, "--num-prompts", "1000"), 120),)),
        Scenario("startup", "start to ready, each in a fresh process: LLM() (tokenizer included) and the server "
                 "(to its first /health 200, polled every 20 ms), alternating, best of 2 after one uncounted LLM() "
                 "run, with each one's phase breakdown (engine-core process included; needs --prepare)",
                 (Step("startup", _py("-m", "pagedserve.benchmarks.startup", "--model", "{model_tok}",
                                      "--engine-args", " ".join(DUMMY), "--repeat", "2", "--warmup", "1",
                                      "--output-json", "{work}/startup.json"), 300),)),
        Scenario("offline-256-hf", "256 lognormal requests: HF transformers static batching (B=128) and "
                 "pagedserve in the same process (~6 min)",
                 (Step("throughput", throughput("--model", "{model}", *DUMMY, "--num-prompts", "256", "--repeat", "2",
                                                "--baseline", "hf", "--hf-batch-size", "128"), 420),)),
    ]
    for tag, flags in VARIANTS.items():
        what = f" ({' '.join(flags)})" if flags else ""
        s.append(Scenario(f"offline-random-400{tag}", f"offline throughput on vLLM's random 250/180 set, 400 "
                          f"requests, two timed runs, step trace summarised{what}",
                          (Step("throughput", throughput("--model", "{model}", *DUMMY, *flags, *RANDOM_400,
                                                         "--repeat", "2", "--trace-json", "{work}/trace.json"),
                                90),)))
        s.append(Scenario(f"serve{tag}", f"online serving, vLLM's random 250/180 set, 400 requests at 32 req/s "
                          f"and unlimited, pagedserve's own client (needs --prepare){what}",
                          (Step("serve", serve(flags), 120),)))
    for tag in ("", "-fp8"):
        flags = VARIANTS[tag]
        s.append(Scenario(f"decode-sweep{tag}", "CUDA-graph decode step time at batch 1 / 8 / 16 / 32 / 64 "
                          f"(context ~300){' with ' + ' '.join(flags) if flags else ''}",
                          (Step("sweep", _py("bench/step_profile.py", "--sweep", "1", "8", "16", "32", "64",
                                             *flags, "--out", "{work}/sweep.json"), 60),)))
        s.append(Scenario(f"step-profiles{tag}", "torch.profiler kernel tables of the serving steps: mixed "
                          "(32 decodes + a 256-token prompt), batch-38 and batch-400 decode, 16k prefill"
                          f"{' with ' + ' '.join(flags) if flags else ''}",
                          (Step("profiles", _py("bench/step_profile.py", "--scenarios", *flags,
                                                "--out", "{work}/profiles.json"), 90),)))
    s += [
        Scenario("serve-step-trace", "serving at 32 req/s and unlimited (one server per rate) with the engine "
                 "core's per-step trace (PAGEDSERVE_STEP_TRACE), summarised per kind of step (needs --prepare)",
                 tuple(Step(f"serve_{rate}", serve((), (rate,)), 80,
                            env={"PAGEDSERVE_STEP_TRACE": "{work}/steps_" + rate + "_trace.json"}) for rate in ("32", "inf"))),
        Scenario("prefix-cache", "memory features: correctness check, shared 1,000-token prefix with caching off "
                 "and on, n=4 / beam-4 block sharing, preemption by recompute / swap / auto under pressure",
                 (Step("prefix", _py("bench/prefix_cache_gpu.py", "--model", "{model}", "--out",
                                     "{work}/prefix.json"), 290),)),
        Scenario("kernels", "every Triton kernel checked against its torch reference at real sizes and timed, "
                 "with the tuning sweeps (bench/kernels, < 4 min)",
                 (Step("kernels", _py("-m", "bench.kernels", "--budget", "220", "--out", "{work}/kernels.json"),
                       240),)),
        Scenario("kernels-quick", "the kernels' checks and timings on a small subset (about a minute)",
                 (Step("kernels", _py("-m", "bench.kernels", "--quick", "--budget", "110", "--out",
                                      "{work}/kernels.json"), 150),)),
        Scenario("attn-tune", "decode-attention launch sweep (split count, tile, warps, stages) at serving shapes, "
                 "current vs earlier defaults", (Step("attn_tune", _py("-m", "bench.kernels.attn_tune", "--budget",
                                                                          "5", "--out", "{work}/attn_tune.json"),
                                                       110),)),
        Scenario("attn-tune-fp8-kv", "decode attention on fp8 KV caches at 38/380, 256/350, 64/8192 (defaults only)",
                 (Step("attn_tune", _py("-m", "bench.kernels.attn_tune", "--no-grid", "--kv-dtype", "fp8", "--shapes",
                                        "38,380", "256,350", "64,8192", "--out", "{work}/attn_tune.json"), 60),)),
        Scenario("gemm", "linear-layer GEMMs at the Llama-3.1-8B shapes: cuBLAS bf16 vs the Triton skinny kernel "
                 "(bf16, fp8) vs fp8 _scaled_mm, decode and prefill sizes (~7 min)",
                 (Step("gemm", _py("-m", "bench.kernels.gemm", "--out", "{work}/gemm.json"), 420),)),
        Scenario("gemm-fp8-tiles", "the fp8 skinny kernel's tile search at M = 16 / 32 / 64",
                 (Step("gemm", _py("-m", "bench.kernels.gemm", "--skinny", "16", "32", "64", "--large",
                                   "--no-bf16-search", "--budget", "40", "--out", "{work}/gemm.json"), 200),)),
    ]
    # Mixture-of-Experts shapes with dummy bf16 weights (docs/moe.md): batch-1 / 8 TPOT against the
    # active-parameter weight-read floor, and 256 lognormal requests. Mixtral-8x7B holds 93 GB of
    # weights: it needs an H200 (141 GB); Qwen3-30B-A3B (61 GB) fits an H100.
    s.append(Scenario("moe-kernels", "the fused MoE kernel at the Mixtral-8x7B / Qwen3-30B-A3B layer shapes, "
                      "1-4,096 tokens: checked vs torch, eager and CUDA-graph times, weight bandwidth, tile sweep",
                      (Step("fused_moe", _py("-m", "bench.kernels.fused_moe", "--sweep", "--budget", "300",
                                             "--out", "{work}/fused_moe.json"), 360),)))
    for tag, cfg in (("mixtral", MIXTRAL), ("qwen3-moe", QWEN3_MOE)):
        s.append(Scenario(f"moe-{tag}", f"{cfg.rsplit('/', 1)[-1]} shape (dummy bf16): batch-1 / 8 TPOT vs the "
                          "active-parameter floor, then 256 lognormal requests", (
                              Step("latency", _py("-m", "pagedserve.benchmarks.latency", "--model", cfg, *DUMMY,
                                                  "--batch-sizes", "1", "8", "--output-len", "128",
                                                  "--output-json", "{work}/latency.json"), 240),
                              Step("throughput", throughput("--model", cfg, *DUMMY, "--num-prompts", "256"), 240))))
    new_kernel_tests = ("tests/kernels/test_wna16.py", "tests/kernels/test_wna16_gemv.py",
                        "tests/kernels/test_wna16_engine.py",
                        "tests/kernels/test_int8_gemm.py", "tests/kernels/test_w8a8_linear.py",
                        "tests/kernels/test_fused_moe.py", "tests/kernels/test_sliding_window_attention.py",
                        "tests/kernels/test_lora.py", "tests/kernels/test_spec_verify_attention.py",
                        "tests/kernels/test_spec_decode_cuda.py")
    s += [
        Scenario("round3-kernel-tests", "the kernels added in round 3 (weight-only int4/int8, INT8 W8A8, fused MoE, "
                 "sliding windows, LoRA, speculative verification) compiled and checked on the GPU",
                 (Step("pytest", _py("-m", "pytest", "-q", "-p", "no:cacheprovider", *new_kernel_tests,
                                     "--junitxml", "{work}/junit.xml"), 420),)),
        Scenario("wna16-tpot", "batch-1 TPOT of the Llama-3.1-8B shape in bf16, GPTQ-4bit, AWQ-4bit, compressed-tensors "
                 "W4A16 and GPTQ-8bit (dummy weights, CUDA graphs) against each one's weight-read floor",
                 (Step("tpot", _py("bench/wna16_gpu.py", "--tpot", "--formats", "bf16", "gptq4", "awq4", "ct-w4a16",
                                   "gptq8", "--out", "{work}/wna16.json"), 220),)),
        Scenario("eagle", "EAGLE / EAGLE-3 heads: the GPU tests (greedy equal with CUDA graphs, acceptance by "
                 "construction), then the Llama-3.1-8B shape (dummy bf16; a random head: acceptance ~0, so the "
                 "TPOT difference is the overhead of the head and the 1 + k verify) at batch 1, 4, 16: no "
                 "speculation, eagle k=3, eagle3 k=3",
                 (Step("pytest", _py("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/kernels/test_spec_eagle_cuda.py",
                                     "--junitxml", "{work}/junit.xml"), 180),
                  *(Step(f"latency-{name}", _py("-m", "pagedserve.benchmarks.latency", "--model", "{model}", *DUMMY,
                                                "--batch-sizes", "1", "4", "16", "--output-len", "128", *spec,
                                                "--output-json", f"{{work}}/latency_{name}.json"), 150)
                    for name, spec in (
                        ("plain", ()),
                        ("eagle", ("--speculative-config", '{{"method": "eagle", "model": '
                                   '"bench/configs/eagle-llama3.1-8b", "num_speculative_tokens": 3}}')),
                        ("eagle3", ("--speculative-config", '{{"method": "eagle3", "model": '
                                    '"bench/configs/eagle3-llama3.1-8b", "num_speculative_tokens": 3}}')))))),
        Scenario("lora", "multi-LoRA on the Llama-3.1-8B shape (dummy bf16, random rank-16 adapters on every "
                 "projection): TTFT / TPOT at batch 1 and 16 without and with an adapter, then 256 lognormal "
                 "requests without adapters and spread over 8 adapters",
                 (Step("latency-base", _py("-m", "pagedserve.benchmarks.latency", "--model", "{model}", *DUMMY,
                                           "--batch-sizes", "1", "16", "--output-len", "128",
                                           "--output-json", "{work}/latency_base.json"), 90),
                  Step("latency-lora", _py("-m", "pagedserve.benchmarks.latency", "--model", "{model}", *DUMMY,
                                           "--enable-lora", "--max-lora-rank", "16", "--lora", "--batch-sizes",
                                           "1", "16", "--output-len", "128",
                                           "--output-json", "{work}/latency_lora.json"), 120),
                  Step("throughput-base", _py("-m", "pagedserve.benchmarks.throughput", "--model", "{model}",
                                              *DUMMY, "--num-prompts", "256",
                                              "--output-json", "{work}/throughput_base.json"), 90),
                  Step("throughput-lora8", _py("-m", "pagedserve.benchmarks.throughput", "--model", "{model}",
                                               *DUMMY, "--num-prompts", "256", "--enable-lora", "--max-loras", "8",
                                               "--max-lora-rank", "16", "--num-lora-adapters", "8",
                                               "--output-json", "{work}/throughput_lora8.json"), 150))),
        Scenario("structured-output", "json_schema structured output (xgrammar bitmask) against plain sampling at "
                 "batch 64 on the Llama-3.1-8B shape (dummy bf16; xgrammar from bench/carry/py312)",
                 (Step("cost", _py("bench/structured_output_cost.py", "--model", "{model_tok}", "--load-format", "dummy",
                                   "--dtype", "bfloat16", "--max-tokens", "64", "--repeats", "3",
                                   "--out", "{work}/structured_output.json"), 150,
                       {"PYTHONPATH": "runtime:.:bench/carry/py312"}),)),
        Scenario("wna16-gemv", "the dot-free W4A16 decode GEMV (kernels/wna16_gemv.py) at M = 1, 2, 4 on the "
                 "Llama-3.1-8B and 70B linear shapes: its default and best tiles next to the skinny kernel and bf16 "
                 "cuBLAS (us, GB/s)",
                 (Step("fma", _py("bench/wna16_gpu.py", "--fma", "--out", "{work}/wna16_fma.json"), 300),)),
        Scenario("router-gpu", "pagedserve router over 3 replicas of the Llama-3.1-8B shape on one GPU (dummy bf16, "
                 "started once): 48 chitchat conversations x 3 turns (max_tokens 32, ignore_eos, 8 in flight) "
                 "routed prefix-aware, round-robin and least-load: prefix-cache hit rate, sticky conversations, "
                 "req/s, output tok/s, TTFT (needs --prepare: tokenizer and conversations)",
                 (Step("router", _py("tests/router/bench_router.py", "--replicas", "3", "--conversations", "48",
                                     "--turns", "3", "--max-tokens", "32", "--ignore-eos", "--concurrency", "8",
                                     "--logics", "prefix-aware,roundrobin,least-load",
                                     "--replica-args", " ".join(ROUTER_REPLICA), "--dataset-path", CHITCHAT,
                                     "--log-dir", "{work}", "--out", "{work}/router.json"), 330),)),
        Scenario("wna16-tpot-70b", "batch-1 TPOT of the Llama-3.1-70B shape in GPTQ-4bit on one GPU against its floor",
                 (Step("tpot", _py("bench/wna16_gpu.py", "--tpot", "--shape", "70b", "--formats", "gptq4",
                                   "--out", "{work}/wna16_70b.json"), 150),)),
        Scenario("mm-llava-check", "LLaVA on the GPU first: a tiny random LLaVA's float32 greedy tokens equal HF's with "
                 "CUDA graphs and async scheduling (chunks through images, mixed text/image batch), bf16 shared images "
                 "within an encoder budget (tests/kernels/test_llava_cuda.py; needs --prepare)",
                 (Step("pytest", _py("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/kernels/test_llava_cuda.py",
                                     "--junitxml", "{work}/junit.xml"), 150),)),
        Scenario("mm-llava", "vision-language: a LLaVA-1.5-7B shape (CLIP ViT-L/14-336 + Llama-2-7B, dummy bf16), "
                 "256 requests of one 336x336 image (576 tokens) + 64 text tokens, 128 output tokens: distinct images "
                 "and 16 shared ones, with the default encoder budget and with 4 images a step; batch-1 TTFT with "
                 "and without the image (bench/mm_gpu.py; needs --prepare)",
                 (Step("default", _py("bench/mm_gpu.py", "--ttft-iters", "10", "--out", "{work}/mm_default.json"), 240),
                  Step("encoder-budget-2304", _py("bench/mm_gpu.py", "--max-num-encoder-input-tokens", "2304",
                                                  "--out", "{work}/mm_budget2304.json"), 180))),
    ]
    tp_env = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
    s += [
        Scenario("tp2", "2 GPUs: TP=1 vs TP=2 float32 equality (5 architectures) and the Llama-3.1-8B shape at "
                 "TP=1 / TP=2 (batch-1 TPOT, 256 lognormal requests, all-reduce latency)",
                 (Step("tp", _py("bench/tp_gpu.py", "--tp", "2", "--skip", "death", "--out", "{work}/tp.json"),
                       200, tp_env),), gpus=2),
        Scenario("tp2-fp8", "2 GPUs: the Llama-3.1-8B shape with --quantization fp8 at TP=1 / TP=2",
                 (Step("tp", _py("bench/tp_gpu.py", "--tp", "2", "--skip", "equality", "death", "--quantization",
                                 "fp8", "--out", "{work}/tp.json"), 200, tp_env),), gpus=2),
        Scenario("tp2-later-engine", "2 GPUs: small TP engines, then the big TP=2 engine in the same process "
                 "(the later-engine stall of runs 7-25 must not come back)",
                 (Step("tp", _py("bench/tp_gpu.py", "--tp", "2", "--archs", "llama", "--skip", "death", "--no-tp1",
                                 "--in-process", "--out", "{work}/tp.json"), 80, tp_env),), gpus=2),
        Scenario("tp2-killed-worker", "2 GPUs: a killed worker rank gives a clear error, not a hang",
                 (Step("tp", _py("bench/tp_gpu.py", "--tp", "2", "--archs", "llama", "--skip", "equality", "big",
                                 "--out", "{work}/tp.json"), 90, tp_env),), gpus=2),
    ]
    return s


SCENARIOS: dict[str, Scenario] = {sc.name: sc for sc in _scenarios()}

GROUPS: dict[str, Group] = {g.name: g for g in (
    Group("regression", "the key figures to re-run after any change, one H200 in under 8 minutes: engine "
          "check, latency, 256 lognormal, serving at 32 req/s and unlimited, fp8 offline",
          ("engine-check", "latency", "offline-256", "serve", "offline-random-400-fp8"), budget_s=470),
    Group("standard", "the standard single-GPU measurements of runs 15-31 (bf16)",
          ("offline-random-400", "serve", "offline-256", "decode-sweep")),
    Group("fp8", "the standard measurements with --quantization fp8 (runs 21-31)",
          ("offline-random-400-fp8", "serve-fp8", "decode-sweep-fp8")),
    Group("kv8", "fp8 KV cache with bf16 and fp8 weights (run 32)",
          ("offline-random-400-kv8", "serve-kv8", "offline-random-400-fp8-kv8", "serve-fp8-kv8")),
    Group("run34", "the run prepared as bench/gpu_run34.sh: bf16 serving with the step trace, the bf16 step "
          "profiles, fp8 weights + fp8 KV serving", ("serve-step-trace", "step-profiles", "serve-fp8-kv8")),
    Group("moe", "Mixture-of-Experts shapes on one H200: kernel tests, Mixtral-8x7B and Qwen3-30B-A3B "
          "(dummy bf16 weights)", ("kernel-tests", "moe-kernels", "moe-mixtral", "moe-qwen3-moe")),
    Group("round3", "one lease for round 3's new paths: their kernels on the GPU, W4A16 TPOT at 8B and 70B",
          ("round3-kernel-tests", "wna16-tpot", "wna16-tpot-70b"), budget_s=560),
    Group("mm", "vision-language (issue 24) on one GPU: the tiny LLaVA checked against HF with CUDA graphs, then "
          "the LLaVA-1.5-7B shape's throughput and TTFT (needs --prepare)", ("mm-llava-check", "mm-llava")),
    Group("tp", "2 GPUs: equality, bf16 and fp8 TP=2, the later-engine sequence",
          ("tp2", "tp2-fp8", "tp2-later-engine")),
)}


def expand(names: list[str]) -> list[Scenario]:
    """Scenario and group names to scenarios, in order, without repeats; unknown names raise ValueError."""
    out: list[Scenario] = []
    for name in names:
        if name in GROUPS:
            subs = list(GROUPS[name].scenarios)
        elif name in SCENARIOS:
            subs = [name]
        else:
            raise ValueError(f"--scenario: unknown scenario or group {name!r} (see --list)")
        out += [SCENARIOS[n] for n in subs if SCENARIOS[n] not in out]
    return out


def group_budget(names: list[str]) -> int | None:
    """The budget of a single named group, if that is what was asked for."""
    return GROUPS[names[0]].budget_s if len(names) == 1 and names[0] in GROUPS else None
