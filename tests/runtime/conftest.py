from __future__ import annotations

import os

import pytest

from tests.runtime.model_factory import ARCHS, FAMILIES, make_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    from pagedserve.models.resolve import resolve_model_dir

    return resolve_model_dir("default")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, smollm2_dir) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny_models")
    out = {arch: make_tiny_model(str(root / arch), arch, smollm2_dir, seed=i) for i, arch in enumerate(ARCHS)}
    out["llama_sharded"] = make_tiny_model(str(root / "llama_sharded"), "llama", smollm2_dir, seed=7, shard=True)
    return out


@pytest.fixture(scope="session")
def family_models(tmp_path_factory, smollm2_dir) -> dict[str, str]:
    """Tiny random models of the families in ``model_factory.FAMILIES`` (issue 20)."""
    root = tmp_path_factory.mktemp("families")
    return {a: make_tiny_model(str(root / a), a, smollm2_dir, seed=11 + i) for i, a in enumerate(FAMILIES)}
