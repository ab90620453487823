"""A Hub repo with PyTorch ``.bin`` weights only (no safetensors) downloads and loads the same weights."""
from __future__ import annotations

import os
import shutil

import torch
from safetensors.torch import load_file

from pagedserve.engine.arg_utils import EngineArgs
from pagedserve.models.loader import build_model


def _params(model_dir: str) -> dict[str, torch.Tensor]:
    mc = EngineArgs(model=model_dir, device="cpu", dtype="float32").create_engine_config().model_config
    return {k: v.detach().clone() for k, v in build_model(mc, "cpu", use_tqdm=False).state_dict().items()}


def test_bin_only_repo_loads_like_its_safetensors(fake_hub, hub_env, tiny_model_dir, tmp_path):
    d = tmp_path / "bin-repo"
    d.mkdir()
    state: dict[str, torch.Tensor] = {}
    for f in os.listdir(tiny_model_dir):
        if f.endswith(".safetensors"):
            state.update(load_file(os.path.join(tiny_model_dir, f)))
        elif not f.endswith(".index.json"):
            shutil.copy(os.path.join(tiny_model_dir, f), d / f)
    torch.save(state, d / "pytorch_model.bin")
    fake_hub.add_repo("acme/bin-only", str(d))
    from pagedserve.models.resolve import resolve_model_dir

    path = resolve_model_dir("acme/bin-only")
    assert "pytorch_model.bin" in os.listdir(path)
    got, want = _params(path), _params(tiny_model_dir)
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
