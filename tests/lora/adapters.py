"""PEFT LoRA adapters built at test time (random, non-zero B) and the HF + PEFT greedy reference."""
from __future__ import annotations

import torch

ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(base_dir: str, out_dir: str, r: int, targets: list[str], seed: int, alpha: float | None = None,
                 rslora: bool = False, std: float = 0.05, safetensors: bool = True, **extra) -> str:
    """Save a PEFT LoRA adapter of the model at ``base_dir`` to ``out_dir``: peft's own A init, B
    drawn from N(0, std) (peft starts B at zero, which would change nothing)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=alpha if alpha is not None else 2 * r, target_modules=targets,
                     use_rslora=rslora, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", **extra)
    pm = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    pm.save_pretrained(out_dir, safe_serialization=safetensors)
    return out_dir


_BASE: dict[str, object] = {}


def peft_greedy(base_dir: str, adapter_dir: str | None, prompts: list[list[int]], max_new: int) -> list[list[int]]:
    """Greedy tokens of HF transformers + peft (float32, adapter unmerged); the base model alone
    when ``adapter_dir`` is None."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir).eval()
    out = []
    for p in prompts:
        ids = torch.tensor([p])
        with torch.no_grad():
            seq = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                                 do_sample=False, eos_token_id=None, pad_token_id=0)
        out.append(seq[0, len(p):].tolist())
    return out
