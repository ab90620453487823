"""Incremental detokenization: multi-byte UTF-8, byte-level BPE, stop strings across tokens."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from pagedserve.engine.detokenizer import IncrementalDetokenizer
from pagedserve.sampling_params import SamplingParams

TEXTS = ["Hello, world! Ça va? 日本語のテキスト 🚀🎉 naïve café — “quotes”",
         "   leading spaces\n\nand\ttabs",
         "emoji family 👨‍👩‍👧‍👦 and flags 🇫🇷🇯🇵",
         "Ünïcödé ∑∫√ 中文字符 한국어"]


@pytest.fixture(scope="module")
def tok(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_equals_full_decode(tok, text):
    prompt = tok.encode("Say:")
    ids = tok.encode(text)
    d = IncrementalDetokenizer(tok, prompt, SamplingParams())
    pieces = []
    for t in ids:
        d.update([t])
        pieces.append(d.delta(False))
    pieces.append(d.delta(True))
    assert "".join(pieces) == tok.decode(ids) == d.text
    assert all("\ufffd" not in p for p in pieces), "a partial UTF-8 character leaked out"


def test_stop_string_across_token_boundary_is_cut(tok):
    text = "The answer is forty-two. STOP here and nothing else"
    ids = tok.encode(text)
    d = IncrementalDetokenizer(tok, [], SamplingParams(stop=["P here"]))
    hit = None
    for t in ids:
        hit = d.update([t]) or hit
        if hit:
            break
    assert hit == "P here"
    assert d.text == "The answer is forty-two. STO"


def test_stop_string_included_when_asked(tok):
    ids = tok.encode("one two three four")
    d = IncrementalDetokenizer(tok, [], SamplingParams(stop=["three"], include_stop_str_in_output=True))
    for t in ids:
        if d.update([t]):
            break
    assert d.text == "one two three"


def test_streaming_holds_back_a_possible_stop_prefix(tok):
    ids = tok.encode("abc END")
    d = IncrementalDetokenizer(tok, [], SamplingParams(stop=["ENDX"]))
    streamed = ""
    for t in ids:
        d.update([t])
        streamed += d.delta(False)
    assert not streamed.endswith("END")  # could still become the stop string
    streamed += d.delta(True)
    assert streamed == "abc END"


def test_skip_special_tokens(tok):
    ids = tok.encode("hi") + [tok.convert_tokens_to_ids("<|im_end|>")]
    keep = IncrementalDetokenizer(tok, [], SamplingParams(skip_special_tokens=False))
    skip = IncrementalDetokenizer(tok, [], SamplingParams(skip_special_tokens=True))
    keep.update(ids)
    skip.update(ids)
    assert keep.text.endswith("<|im_end|>") and skip.text == "hi"
