"""The offline API end to end with the real SmolLM2 weights: chat, seeds, n, stop strings, CLI."""
from __future__ import annotations

import subprocess
import sys

import pytest

from pagedserve import LLM, SamplingParams


@pytest.fixture(scope="module")
def llm(smollm2_dir) -> LLM:
    return LLM("default", device="cpu", max_model_len=512, use_tqdm=False)


def test_chat_answers_paris(llm):
    out = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                   SamplingParams(temperature=0.0, max_tokens=20), use_tqdm=False)
    assert "Paris" in out[0].outputs[0].text
    assert out[0].outputs[0].finish_reason == "stop"


def test_same_seed_same_text_alone_or_in_batch(llm):
    sp = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=12, seed=1234)
    prompt = "Write a short poem about the sea."
    alone = llm.generate(prompt, sp, use_tqdm=False)[0].outputs[0].text
    others = SamplingParams(temperature=1.0, max_tokens=8)
    batch = llm.generate(["Tell me a joke.", prompt, "Count to five:"], [others, sp, others], use_tqdm=False)
    assert batch[1].outputs[0].text == alone
    assert llm.generate(prompt, sp, use_tqdm=False)[0].outputs[0].text == alone


def test_n_samples_and_stop_strings(llm):
    sp = SamplingParams(n=3, temperature=1.0, max_tokens=10, seed=7)
    out = llm.generate("List three fruits:", sp, use_tqdm=False)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1, "seeded children should differ"
    greedy = llm.generate("The capital of France is", SamplingParams(temperature=0, max_tokens=12),
                          use_tqdm=False)[0].outputs[0].text
    word = greedy.split()[1] if len(greedy.split()) > 1 else greedy.split()[0]
    stopped = llm.generate("The capital of France is", SamplingParams(temperature=0, max_tokens=12, stop=[word]),
                           use_tqdm=False)[0].outputs[0]
    assert stopped.finish_reason == "stop" and stopped.stop_reason == word
    assert stopped.text == greedy[:greedy.index(word)]


def test_max_tokens_and_min_tokens(llm):
    out = llm.chat([{"role": "user", "content": "Say hi."}],
                   SamplingParams(temperature=0, max_tokens=40, min_tokens=25), use_tqdm=False)[0].outputs[0]
    assert len(out.token_ids) >= 25
    out = llm.generate("Hello", SamplingParams(temperature=0, max_tokens=3), use_tqdm=False)[0].outputs[0]
    assert len(out.token_ids) == 3 and out.finish_reason == "length"


def test_cli_generate_chat(smollm2_dir):
    r = subprocess.run([sys.executable, "-m", "pagedserve.entrypoints.cli", "generate", "--chat",
                        "--prompt", "What is the capital of France?", "--max-tokens", "16", "--device", "cpu"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


def test_cli_bad_flag_gives_clear_error():
    r = subprocess.run([sys.executable, "-m", "pagedserve.entrypoints.cli", "generate", "--prompt", "x",
                        "--block-size", "7"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "block_size" in r.stderr and "Traceback" not in r.stderr


TOOL_TEMPLATE = ("{% if tools %}Tools: {{ tools | map(attribute='function.name') | join(', ') }}\n{% endif %}"
                 "{% for m in messages %}{{ m.role }}: {{ m.content }}"
                 "{% if m.tool_calls %}{{ m.tool_calls[0].function.arguments.city }}{% endif %}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}{% if lang %}[{{ lang }}]{% endif %}")


def test_chat_renders_tools_kwargs_and_continuation_as_the_tokenizer_does(llm):
    tok = llm.get_tokenizer()
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    msgs = [{"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "content": "sunny", "tool_call_id": "c1"}]
    sp = SamplingParams(temperature=0, max_tokens=1)
    out = llm.chat(msgs, sp, use_tqdm=False, chat_template=TOOL_TEMPLATE, tools=tools,
                   chat_template_kwargs={"lang": "fr"})[0]
    as_objects = [msgs[0], {**msgs[1], "tool_calls": [{**msgs[1]["tool_calls"][0], "function": {
        "name": "weather", "arguments": {"city": "Paris"}}}]}, msgs[2]]
    text = tok.apply_chat_template(as_objects, tools=tools, chat_template=TOOL_TEMPLATE, lang="fr",
                                   add_generation_prompt=True, tokenize=False)
    assert text.startswith("Tools: weather\n") and "Paris" in text and text.endswith("assistant:[fr]")
    assert out.prompt_token_ids == tok.encode(text, add_special_tokens=False)
    partial = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hello"}]
    cont = llm.chat(partial, sp, use_tqdm=False, add_generation_prompt=False, continue_final_message=True)[0]
    ref = tok.apply_chat_template(partial, continue_final_message=True, tokenize=False)
    assert cont.prompt_token_ids == tok.encode(ref, add_special_tokens=False) and ref.rstrip().endswith("Hello")
    with pytest.raises(ValueError, match="continue_final_message needs the last message to be an assistant"):
        llm.chat(partial[:1], sp, add_generation_prompt=False, continue_final_message=True)
    with pytest.raises(ValueError, match="cannot both be true"):
        llm.chat(partial, sp, continue_final_message=True)
