"""The chat prompt the server renders, option by option, equals the tokenizer's own
``apply_chat_template`` + ``encode``: ``add_generation_prompt``, ``continue_final_message``,
``add_special_tokens``, ``chat_template`` + ``chat_template_kwargs``; checked through ``/tokenize``
(the exact ids) and ``/v1/chat/completions`` (its usage.prompt_tokens), plus ``echo`` on both APIs.

The server runs the model-free core (only the rendering is under test) with the default model's
tokenizer changed to add a BOS token, as Llama's does, so ``add_special_tokens`` changes the ids."""
from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoTokenizer

from tests.server.conftest import start_server
from tests.server.server_proc import post

FAKE_CORE = "pagedserve.benchmarks.fake_core:FakeEngineCore"
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "The capital of France is"}]
# a request template that reads a keyword argument and the BOS token
TEMPLATE = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] | upper }}] {{ m['content'] }}\n{% endfor %}"
            "{% if shout %}ANSWER LOUDLY!\n{% endif %}{% if add_generation_prompt %}[ASSISTANT] {% endif %}")


def _bos_tokenizer(src: str, dst) -> str:
    """The default tokenizer, with a post-processor that prepends <|im_start|> (id 1) as a BOS."""
    dst.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(f"{src}/{name}", dst / name)
    tj = json.loads((dst / "tokenizer.json").read_text())
    bos = {"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}
    tj["post_processor"] = {
        "type": "TemplateProcessing", "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1], "tokens": ["<|im_start|>"]}}}
    (dst / "tokenizer.json").write_text(json.dumps(tj))
    return str(dst)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> str:
    from pagedserve.models.resolve import resolve_model_dir

    return _bos_tokenizer(resolve_model_dir("default"), tmp_path_factory.mktemp("tok") / "bos-tokenizer")


@pytest.fixture(scope="module")
def tok(tok_dir):
    t = AutoTokenizer.from_pretrained(tok_dir)
    assert t("hi").input_ids == [1] + t("hi", add_special_tokens=False).input_ids  # the BOS is added
    return t


@pytest.fixture(scope="module")
def srv(tmp_path_factory, tok_dir):
    s = start_server(tmp_path_factory, "chat-render", ["--engine-core-factory", FAKE_CORE, "--tokenizer", tok_dir,
                                                       "--trust-request-chat-template"],
                     env={"PAGEDSERVE_FAKE_STEP_MS": "1"})
    yield s
    s.stop()


def _reference(tok, messages: list, add_special_tokens: bool = False, **kw) -> list[int]:
    text = tok.apply_chat_template(messages, tokenize=False, **kw)
    return tok(text, add_special_tokens=add_special_tokens).input_ids


CASES = {  # request options -> the tokenizer call that must give the same ids
    "defaults": ({}, dict(add_generation_prompt=True)),
    "no_generation_prompt": ({"add_generation_prompt": False}, dict(add_generation_prompt=False)),
    "continue_final_message": ({"add_generation_prompt": False, "continue_final_message": True},
                               dict(add_generation_prompt=False, continue_final_message=True)),
    "add_special_tokens": ({"add_special_tokens": True}, dict(add_generation_prompt=True, add_special_tokens=True)),
    "template_kwargs": ({"chat_template": TEMPLATE, "chat_template_kwargs": {"shout": True}},
                        dict(add_generation_prompt=True, chat_template=TEMPLATE, shout=True)),
    "template_no_kwargs": ({"chat_template": TEMPLATE}, dict(add_generation_prompt=True, chat_template=TEMPLATE)),
    # a reserved argument in chat_template_kwargs does not override the request's own field
    "reserved_kwarg_ignored": ({"chat_template_kwargs": {"add_generation_prompt": False}},
                               dict(add_generation_prompt=True)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rendered_prompt_equals_apply_chat_template(srv, tok, case):
    options, reference = CASES[case]
    want = _reference(tok, MESSAGES, **reference)
    status, body = post(srv, "/tokenize", {"messages": MESSAGES, **options})
    assert status == 200, body
    assert body["tokens"] == want, (case, tok.decode(body["tokens"]), tok.decode(want))
    status, body = post(srv, "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 1, **options})
    assert status == 200, body
    assert body["usage"]["prompt_tokens"] == len(want), case


def test_options_change_the_prompt(tok):
    """The cases above differ from each other (so each comparison tests its option)."""
    rendered = {case: tuple(_reference(tok, MESSAGES, **ref)) for case, (_, ref) in CASES.items()}
    distinct = {k: v for k, v in rendered.items() if k != "reserved_kwarg_ignored"}
    assert len(set(distinct.values())) == len(distinct), rendered
    assert rendered["reserved_kwarg_ignored"] == rendered["defaults"]


def test_chat_echo_continues_the_final_message(srv):
    body = {"messages": MESSAGES, "add_generation_prompt": False, "continue_final_message": True, "echo": True,
            "max_tokens": 3}
    status, resp = post(srv, "/v1/chat/completions", body)
    assert status == 200, resp
    content = resp["choices"][0]["message"]["content"]
    assert content.startswith(MESSAGES[-1]["content"]) and len(content) > len(MESSAGES[-1]["content"])
    status, plain = post(srv, "/v1/chat/completions", {**body, "echo": False})
    assert content == MESSAGES[-1]["content"] + plain["choices"][0]["message"]["content"]


def test_completion_echo_and_add_special_tokens(srv, tok):
    prompt = "The capital of France is"
    for add in (True, False):
        status, resp = post(srv, "/v1/completions", {"prompt": prompt, "max_tokens": 2, "echo": True,
                                                     "add_special_tokens": add})
        assert status == 200, resp
        assert resp["usage"]["prompt_tokens"] == len(tok(prompt, add_special_tokens=add).input_ids)
        assert resp["choices"][0]["text"].startswith(prompt)
    status, resp = post(srv, "/v1/completions", {"prompt": prompt, "max_tokens": 2})
    assert resp["usage"]["prompt_tokens"] == len(tok(prompt).input_ids)  # completions add them by default
