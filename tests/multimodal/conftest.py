from __future__ import annotations

import os

import pytest

from tests.multimodal.llava_factory import make_tiny_llava

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> str:
    from tests.runtime.model_factory import tokenizer_source

    return make_tiny_llava(str(tmp_path_factory.mktemp("tiny_llava")), tokenizer_source())


@pytest.fixture(scope="session")
def tiny_text_model(tmp_path_factory) -> str:
    from tests.runtime.model_factory import make_tiny_model, tokenizer_source

    return make_tiny_model(str(tmp_path_factory.mktemp("tiny_text")), "llama", tokenizer_source(), seed=0)


@pytest.fixture(scope="session")
def tiny_idefics3(tmp_path_factory) -> str:
    from tests.multimodal.idefics3_factory import make_tiny_idefics3
    from tests.runtime.model_factory import tokenizer_source

    return make_tiny_idefics3(str(tmp_path_factory.mktemp("tiny_idefics3")), tokenizer_source())
