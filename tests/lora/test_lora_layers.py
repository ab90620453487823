"""Below the engine: the PEFT reader's per-module rank and scaling equal peft's own (rank_pattern,
alpha_pattern, rsLoRA), and the LoRA hook adds its delta after a quantized (fp8) base product."""
from __future__ import annotations

import torch

from pagedserve.layers.linear import ColumnParallelLinear
from pagedserve.layers.lora import LoRABatch, LoRALinear
from pagedserve.lora.peft import load_peft_adapter
from tests.lora.adapters import ALL_TARGETS, make_adapter


def test_reader_scaling_equals_peft(base_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    path = make_adapter(base_dir, str(tmp_path / "pat"), 8, ALL_TARGETS, seed=3, alpha=16, rslora=True,
                        rank_pattern={"q_proj": 4}, alpha_pattern={"down_proj": 3})
    ours = load_peft_adapter(path, 16, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], 2)
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), path)
    seen = 0
    for name, mod in ref.named_modules():
        if hasattr(mod, "scaling") and isinstance(mod.scaling, dict) and "default" in mod.scaling:
            key = name.removeprefix("base_model.model.")
            w = ours.modules[key]
            assert abs(w.scaling - mod.scaling["default"]) < 1e-12, key
            assert w.rank == mod.r["default"], key
            torch.testing.assert_close(w.lora_a, mod.lora_A["default"].weight.float())
            torch.testing.assert_close(w.lora_b, mod.lora_B["default"].weight.float())
            seen += 1
    assert seen == len(ours.modules) == 2 * 7
    assert ours.modules["model.layers.0.self_attn.q_proj"].rank == 4


def test_lora_delta_after_a_quantized_base_product():
    torch.manual_seed(0)
    layer = ColumnParallelLinear(32, 48)
    layer.weight.data.normal_(0, 0.05)
    layer.quantize_fp8()
    x = torch.randn(5, 32)
    base = layer(x)
    batch = LoRABatch(num_slots=2, max_tokens=8, device=torch.device("cpu"))
    layer.lora = LoRALinear(batch, 32, [48], max_rank=4, dtype=torch.float32, device=torch.device("cpu"))
    a, b = torch.randn(4, 32), torch.randn(48, 4) * 0.1
    layer.lora.set_slot(1, [(a, b)])
    slots = torch.tensor([1, -1, 1, -1, -1])
    batch.token_slots[:5] = slots
    batch.active = [1]
    y = layer(x)
    want = base.clone()
    want[slots == 1] += x[slots == 1] @ a.t() @ b.t()
    torch.testing.assert_close(y, want)
