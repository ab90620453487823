"""Vision-language serving (issue 24): a LLaVA-1.5-7B shape with dummy weights, offline throughput and
batch-1 TTFT, one JSON.

The checkpoint directory is built at run time in a temporary folder, without weights
(``load_format="dummy"``): ``config.json`` of ``LlavaForConditionalGeneration`` (CLIP ViT-L/14 at
336 px: 24 layers, 1024 hidden, 576 image tokens with ``vision_feature_layer=-2`` and the "default"
strategy; a Llama-2-7B text model: 32 layers, 4096 hidden, 11008 intermediate) and the HF processor
(``CLIPImageProcessor`` at 336 px, the SmolLM2 tokenizer carried in ``bench/carry/smollm2-tok`` with
an added ``<image>`` token, a LLaVA-1.5 chat template). The vocabulary is the tokenizer's (49,153,
padded to 49,216) instead of LLaVA-1.5's 32,064: about 0.3 GB more embedding and LM-head weights.

In one engine (bf16, CUDA graphs on):
- the vision tower alone on 1 / 4 / 16 images (``embed_images``);
- ``--ttft-iters N``: TTFT at batch 1 (median of N after a warm-up; a fresh image and text each time,
  so neither cache hits) of ``USER: <image>\\n{text} ASSISTANT:``, of the same prompt without the
  image, and of a text prompt as long as the image prompt (its difference to the image prompt is the
  vision tower's cost); the HF processor's share of the image TTFT is reported on its own;
- offline throughput through ``LLM.generate``: ``--num-prompts`` requests, each a random 336x336
  image + ``--input-len`` text tokens, ``--output-len`` tokens (ignore_eos); once with distinct
  images (no encoder-cache hits), once with the requests sharing ``--shared-images`` images. Each run
  reports requests/s, output and total tok/s, the HF processor's time (before the first step: it runs
  in ``add_request``), and the scheduler's counters: encoder-cache queries / hits, image tokens
  encoded, prefix-cache hits.

    PYTHONPATH=runtime python bench/mm_gpu.py --ttft-iters 10 --out $OUT/mm_default.json
    PYTHONPATH=runtime python bench/mm_gpu.py --max-num-encoder-input-tokens 2304 --out $OUT/mm_budget2304.json
    PYTHONPATH=runtime python bench/mm_gpu.py --tiny --out /tmp/mm_tiny.json     # CPU: a tiny LLaVA
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# run as ``python bench/mm_gpu.py``: bench/ must not shadow top-level packages (bench/kernels vs kernels)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
sys.path.insert(0, os.path.join(ROOT, "runtime"))

CARRIED_TOKENIZER = os.path.join(ROOT, "bench", "carry", "smollm2-tok")
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %} {% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")
#: LLaVA-1.5-7B: CLIP ViT-L/14-336 and Llama-2-7B
SHAPE_7B = dict(
    vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5),
    text=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
              num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0))
#: a tiny LLaVA for the CPU check (the shape of tests/multimodal/llava_factory.py: 16 image tokens)
SHAPE_TINY = dict(
    vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=28,
                patch_size=7, projection_dim=32),
    text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=1024))


def tokenizer_dir() -> str:
    """The SmolLM2 tokenizer: carried (``python -m bench --prepare``), else the default model's."""
    if os.path.exists(os.path.join(CARRIED_TOKENIZER, "tokenizer.json")):
        return CARRIED_TOKENIZER
    from pagedserve.models.resolve import resolve_model_dir

    try:
        return resolve_model_dir("default")
    except Exception:  # noqa: BLE001 - no default model on this machine either
        raise SystemExit(f"no tokenizer: run `python -m bench --prepare` and carry bench/carry "
                         f"({CARRIED_TOKENIZER} is missing)") from None


def write_llava(out_dir: str, shape: dict, tok_dir: str) -> str:
    """config.json + the HF processor files of a LLaVA of ``shape`` (no weights: load it with
    ``load_format="dummy"``), loadable by ``AutoProcessor`` as the engine does."""
    from transformers import (AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaProcessor)

    tok = AutoTokenizer.from_pretrained(tok_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    vocab = -(-len(tok) // 64) * 64
    vision = CLIPVisionConfig(**shape["vision"])
    text = LlamaConfig(vocab_size=vocab, tie_word_embeddings=False, eos_token_id=None, bos_token_id=None,
                       pad_token_id=None, **shape["text"])
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                      vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu")
    cfg.architectures = ["LlavaForConditionalGeneration"]
    cfg.save_pretrained(out_dir)
    side = vision.image_size
    ip = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=vision.patch_size,
                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                   chat_template=CHAT_TEMPLATE).save_pretrained(out_dir)
    return out_dir


def random_image(seed: int, side: int):
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8))


class TextMaker:
    """Random text of exactly ``n`` tokens: words that are one token each with their leading space."""

    def __init__(self, tok, seed: int = 0) -> None:
        import numpy as np

        self.tok = tok
        self.rng = np.random.default_rng(seed)
        cands = sorted(t[1:] for t in tok.get_vocab() if re.fullmatch(r"Ġ[a-z]{3,9}", t))  # GPT-2 style BPE
        cands = [str(w) for w in self.rng.permutation(cands)[:4000]]
        ids = tok([" " + w for w in cands], add_special_tokens=False)["input_ids"] if cands else []
        self.words = [w for w, i in zip(cands, ids) if len(i) == 1]
        if not self.words:
            raise SystemExit("the tokenizer has no single-token words ('Ġword'): use the carried SmolLM2 tokenizer")

    def __call__(self, n: int) -> str:
        """``n`` words, each with its leading space (so each is one token after the prompt's newline too)."""
        return "".join(" " + self.words[int(i)] for i in self.rng.integers(0, len(self.words), n))

    def template_tokens(self, prompt) -> int:
        """Tokens of ``prompt(text)`` besides the text's own (the ``<image>`` placeholder counts 1)."""
        return len(self.tok(prompt(self(8)))["input_ids"]) - 8


def image_prompt(text: str) -> str:
    return f"USER: <image>\n{text} ASSISTANT:"  # LLaVA-1.5's prompt format


def text_prompt(text: str) -> str:
    return f"USER:{text} ASSISTANT:"


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def vision_encoder_ms(model, batches: tuple[int, ...], iters: int) -> dict[str, float]:
    """Median ms of the vision tower + projector (``embed_images``) on ``b`` images."""
    import torch

    p = next(model.parameters())
    out = {}
    for b in batches:
        inputs = {k: v.to(p.dtype) for k, v in model.dummy_image_inputs(b, p.device).items()}
        times = []
        with torch.inference_mode():
            for i in range(iters + 1):
                _sync()
                t = time.perf_counter()
                model.embed_images(**inputs)
                _sync()
                if i:  # the first call warms up
                    times.append((time.perf_counter() - t) * 1e3)
        out[str(b)] = round(statistics.median(times), 3)
    return out


def ttft_once(engine, prompt, rid: str) -> tuple[float, float, int]:
    """(TTFT s from ``add_request`` to the first token on the host, the ``add_request`` share (HF
    processor), prompt tokens) of one request alone."""
    from pagedserve import SamplingParams

    sp = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    _sync()
    t0 = time.perf_counter()
    engine.add_request(rid, prompt, sp)
    t1 = time.perf_counter()
    first, n = None, 0
    while engine.has_unfinished_requests():
        for o in engine.step():
            if first is None and o.outputs[0].token_ids:
                first, n = time.perf_counter(), len(o.prompt_token_ids)
    return first - t0, t1 - t0, n


def ttft(llm, text: TextMaker, args, side: int, tokens_per_image: int) -> dict:
    engine = llm.llm_engine
    kinds = {"image": lambda i: {"prompt": image_prompt(text(args.input_len)),
                                 "multi_modal_data": {"image": random_image(90_000 + i, side)}},
             "text": lambda i: text_prompt(text(args.input_len)),
             "text_same_length": lambda i: text_prompt(text(same))}
    # as many tokens as the image prompt: its template, the image's tokens and the text
    same = text.template_tokens(image_prompt) - 1 + tokens_per_image + args.input_len - text.template_tokens(text_prompt)
    for kind, make in kinds.items():  # warm-up
        ttft_once(engine, make(-1 - len(kind)), f"ttft-warm-{kind}")
    each: dict[str, list] = {k: [] for k in kinds}
    for i in range(args.ttft_iters):
        for kind, make in kinds.items():  # interleaved: drifts hit each kind alike
            each[kind].append(ttft_once(engine, make(i), f"ttft-{kind}-{i}"))
    out: dict = {"iters": args.ttft_iters}
    for kind, runs in each.items():
        out[f"{kind}_ms"] = round(statistics.median(r[0] for r in runs) * 1e3, 3)
        out[f"{kind}_prompt_tokens"] = runs[0][2]
    out["image_add_request_ms"] = round(statistics.median(r[1] for r in each["image"]) * 1e3, 3)
    out["image_minus_same_length_ms"] = round(out["image_ms"] - out["text_same_length_ms"], 3)
    out["each_ms"] = {k: [round(r[0] * 1e3, 3) for r in runs] for k, runs in each.items()}
    return out


def throughput(llm, name: str, prompts: list, args, tokens_per_image: int) -> dict:
    import torch

    from pagedserve import SamplingParams

    engine = llm.llm_engine
    core = engine.core
    mm = engine.processor.mm
    spent = [0.0]
    process = mm.process

    def timed_process(*a, **kw):  # the HF processor's time (in add_request, before the first step)
        t = time.perf_counter()
        try:
            return process(*a, **kw)
        finally:
            spent[0] += time.perf_counter() - t

    sp = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=args.output_len, ignore_eos=True)
    llm.reset_prefix_cache()
    before, enc = core.get_stats(), core.runner.encoder_cache
    encoded, max_rows = enc.misses, enc.max_step_tokens
    enc.max_step_tokens = 0
    core.trace, core.wait_seconds = [], 0.0
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    mm.process = timed_process
    try:
        _sync()
        t0 = time.perf_counter()
        outs = llm.generate(prompts, sp, use_tqdm=False)
        _sync()
        elapsed = time.perf_counter() - t0
    finally:
        mm.process = process
    after = core.get_stats()
    n_out = sum(len(o.outputs[0].token_ids) for o in outs)
    n_in = sum(len(o.prompt_token_ids) for o in outs)
    n_img = len(prompts) * tokens_per_image
    assert n_out == len(prompts) * args.output_len, "every request must generate exactly --output-len tokens"
    from pagedserve.benchmarks.throughput import step_profile

    res = {"name": name, "num_prompts": len(prompts),
           "num_distinct_images": len({id(p["multi_modal_data"]["image"]) for p in prompts}),
           "elapsed_s": round(elapsed, 3), "requests_per_s": round(len(prompts) / elapsed, 3),
           "output_tok_s": round(n_out / elapsed, 1), "total_tok_s": round((n_in + n_out) / elapsed, 1),
           "total_text_tok_s": round((n_in - n_img + n_out) / elapsed, 1),
           "input_tokens": n_in, "image_tokens": n_img, "text_tokens": n_in - n_img, "output_tokens": n_out,
           "hf_processor_s": round(spent[0], 3),
           "mm_cache_queries": after.mm_cache_queries_total - before.mm_cache_queries_total,
           "mm_cache_hits": after.mm_cache_hits_total - before.mm_cache_hits_total,
           "encoder_tokens": after.num_encoder_tokens_total - before.num_encoder_tokens_total,
           "images_encoded": enc.misses - encoded, "max_encoder_tokens_per_step": enc.max_step_tokens,
           "prefix_cache_queries": after.prefix_cache_queries_total - before.prefix_cache_queries_total,
           "prefix_cache_hits": after.prefix_cache_hits_total - before.prefix_cache_hits_total,
           "num_preemptions": after.num_preemptions_total - before.num_preemptions_total,
           "step_profile": step_profile(core.trace, core.wait_seconds)}
    enc.max_step_tokens = max(max_rows, enc.max_step_tokens)
    if torch.cuda.is_available():
        res["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(f"{name}: {res['requests_per_s']:.2f} req/s, {res['output_tok_s']:.0f} output tok/s, "
          f"{res['total_tok_s']:.0f} total tok/s ({elapsed:.2f} s, HF processor {spent[0]:.2f} s); "
          f"encoder cache {res['mm_cache_hits']}/{res['mm_cache_queries']} hits, {res['images_encoded']} images "
          f"encoded (<= {res['max_encoder_tokens_per_step']} tokens a step), prefix cache "
          f"{res['prefix_cache_hits']}/{res['prefix_cache_queries']} tokens", flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a tiny LLaVA on the CPU (float32; 4 requests, 2 images)")
    ap.add_argument("--num-prompts", type=int, default=None, help="requests per throughput run (256; tiny 4)")
    ap.add_argument("--shared-images", type=int, default=None,
                    help="images the requests of the second run share (16; tiny 2); 0: no such run")
    ap.add_argument("--input-len", type=int, default=None, help="text tokens per prompt besides the image (64; tiny 12)")
    ap.add_argument("--output-len", type=int, default=None, help="output tokens per request (128; tiny 6)")
    ap.add_argument("--ttft-iters", type=int, default=0, help="batch-1 TTFT runs of each kind (0: none)")
    ap.add_argument("--max-num-encoder-input-tokens", type=int, default=None,
                    help="the engine's encoder budget per step, in image tokens (default: the engine's)")
    ap.add_argument("--out", default=None, help="the JSON to write")
    args = ap.parse_args(argv)
    tiny = args.tiny
    for name, big, small in (("num_prompts", 256, 4), ("shared_images", 16, 2), ("input_len", 64, 12),
                             ("output_len", 128, 6)):
        if getattr(args, name) is None:
            setattr(args, name, small if tiny else big)
        if getattr(args, name) < (0 if name == "shared_images" else 1):
            ap.error(f"--{name.replace('_', '-')} must be >= {0 if name == 'shared_images' else 1}")
    t_start = time.perf_counter()
    import torch

    from pagedserve import LLM

    shape = SHAPE_TINY if tiny else SHAPE_7B
    tmp = tempfile.mkdtemp(prefix="pagedserve-mm-bench-")
    model_dir = write_llava(os.path.join(tmp, "llava-tiny" if tiny else "llava-1.5-7b-shape"), shape, tokenizer_dir())
    eng_kw: dict = dict(load_format="dummy", use_tqdm=False,
                        max_num_encoder_input_tokens=args.max_num_encoder_input_tokens)
    if tiny:
        eng_kw.update(dtype="float32", device="cpu", max_model_len=256, kv_cache_memory=16 << 20)
    else:
        eng_kw.update(dtype="bfloat16")
    t0 = time.perf_counter()
    llm = LLM(model_dir, **eng_kw)
    core = llm.llm_engine.core
    startup_s = time.perf_counter() - t0
    model = core.runner.model
    side = shape["vision"]["image_size"]
    per_image = model.tokens_per_image
    sc = core.config.scheduler_config
    mm = llm.llm_engine.processor.mm
    result: dict = {
        "model": "tiny LLaVA" if tiny else "LLaVA-1.5-7B shape (CLIP ViT-L/14-336 + Llama-2-7B), dummy weights",
        "tiny": tiny, "dtype": str(core.config.model_config.dtype),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() and not tiny else "cpu",
        "vision_config": shape["vision"], "text_config": shape["text"],
        "vocab_size": core.config.model_config.arch.vocab_size, "tokens_per_image": per_image,
        "image_size": side, "image_processor": type(mm.hf.image_processor).__name__,
        "num_params": sum(p.numel() for p in model.parameters()),
        "vision_params": sum(p.numel() for n, p in model.named_parameters() if not n.startswith("language_model.")),
        "max_num_batched_tokens": sc.max_num_batched_tokens,
        "max_num_encoder_input_tokens_flag": args.max_num_encoder_input_tokens,
        "encoder_budget_tokens": core.scheduler.encoder.compute_budget,
        "encoder_cache_size_tokens": core.scheduler.encoder.cache_size,
        "input_len": args.input_len, "output_len": args.output_len,
        "startup_s": round(startup_s, 2), "graph_capture_s": core.graph_capture_seconds,
        "num_gpu_blocks": core.config.cache_config.num_gpu_blocks}
    print(f"{result['model']}: {result['num_params'] / 1e9:.2f} B parameters ({result['vision_params'] / 1e6:.0f} M "
          f"vision + projector), {per_image} tokens per image, ready in {startup_s:.1f} s", flush=True)
    text = TextMaker(mm.hf.tokenizer)
    result["vision_encoder_ms"] = vision_encoder_ms(model, (1, 4) if tiny else (1, 4, 16), 3 if tiny else 5)
    print(f"vision tower + projector (ms by images): {result['vision_encoder_ms']}", flush=True)
    result["prompt_template_tokens"] = text.template_tokens(image_prompt) - 1  # besides the image and the text
    # warm-up: image and text requests through prefill and decode (images not used again)
    warm = [{"prompt": image_prompt(text(args.input_len)), "multi_modal_data": {"image": random_image(80_000 + i, side)}}
            for i in range(min(args.num_prompts, 4 if tiny else 32))]
    from pagedserve import SamplingParams

    llm.generate(warm + [text_prompt(text(args.input_len))], SamplingParams(max_tokens=8, ignore_eos=True),
                 use_tqdm=False)
    if args.ttft_iters:
        result["ttft"] = ttft(llm, text, args, side, per_image)
        t = result["ttft"]
        print(f"TTFT batch 1 (median of {args.ttft_iters}): one image {t['image_ms']:.1f} ms "
              f"({t['image_prompt_tokens']} tokens; HF processor {t['image_add_request_ms']:.1f} ms), same text without "
              f"the image {t['text_ms']:.1f} ms ({t['text_prompt_tokens']}), text of the image prompt's length "
              f"{t['text_same_length_ms']:.1f} ms ({t['text_same_length_prompt_tokens']})", flush=True)
    n = args.num_prompts
    images = [random_image(10_000 + i, side) for i in range(n)]
    runs = [("distinct", [{"prompt": image_prompt(text(args.input_len)), "multi_modal_data": {"image": images[i]}}
                          for i in range(n)])]
    if args.shared_images:
        shared = [random_image(50_000 + i, side) for i in range(args.shared_images)]
        runs.append((f"shared-{args.shared_images}",
                     [{"prompt": image_prompt(text(args.input_len)),
                       "multi_modal_data": {"image": shared[i % args.shared_images]}} for i in range(n)]))
    result["runs"] = [throughput(llm, name, prompts, args, per_image) for name, prompts in runs]
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    llm.shutdown()
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
