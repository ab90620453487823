"""HF transformers static batching on the same requests: batches of B in arrival order, each
padded on the left and run for its longest output; "useful" tokens are each request's own
output length (what a static-batching server would return)."""
from __future__ import annotations

import gc
import time

import torch


def hf_static_batching(model_dir: str, requests: list[tuple[list[int], int]], batch_size: int, dtype: torch.dtype,
                       device: str, dummy: bool) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM

    if dummy:
        cfg = AutoConfig.from_pretrained(model_dir)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
        for p in model.parameters():
            p.data.uniform_(-2e-2, 2e-2)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    model.eval()
    pad = 0
    useful = sum(o for _, o in requests)
    generated = 0

    def run_batch(batch: list[tuple[list[int], int]]) -> int:
        width = max(len(p) for p, _ in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (p, _) in enumerate(batch):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        new = max(o for _, o in batch)
        with torch.no_grad():
            model.generate(ids.to(device), attention_mask=mask.to(device), max_new_tokens=new, min_new_tokens=new,
                           do_sample=False, eos_token_id=None, pad_token_id=pad)
        return new * len(batch)

    run_batch(requests[:min(2, len(requests))][:1])  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(0, len(requests), batch_size):
        generated += run_batch(requests[i:i + batch_size])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    del model
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"batch_size": batch_size, "elapsed_s": elapsed, "useful_output_tokens": useful,
            "generated_tokens": generated, "useful_output_tok_s": useful / elapsed}
