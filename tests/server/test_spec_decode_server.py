"""``--speculative-config`` through the real server and the real ``openai`` client: the same greedy
text as the plain server (streamed or not), vLLM's spec_decode counters on /metrics, and a clear
error for a bad config before any engine starts."""
from __future__ import annotations

import json

import openai
import pytest

from pagedserve.entrypoints.openai.cli_serve import make_parser, plan_models
from tests.server.conftest import MODEL_NAME, start_server
from tests.server.server_proc import metric, wait_for

SPEC = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3}
PROMPT = ("Repeat this list exactly: apple, banana, cherry, date, elderberry, fig, grape, honeydew. "
          "Repeat: apple, banana, cherry,")


@pytest.fixture(scope="module")
def spec_server(tmp_path_factory):
    srv = start_server(tmp_path_factory, "spec", ["--max-num-seqs", "4", "--speculative-config", json.dumps(SPEC)])
    yield srv
    srv.stop()


def _client(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_greedy_text_equals_the_plain_server_and_counters_move(spec_server, openai_client):
    kw = dict(model=MODEL_NAME, prompt=PROMPT, max_tokens=16, temperature=0)
    want = openai_client.completions.create(**kw).choices[0].text
    client = _client(spec_server)
    got = client.completions.create(**kw)
    assert got.choices[0].text == want and got.usage.completion_tokens == 16
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kw) if c.choices)
    assert streamed == want
    drafts = wait_for(lambda: metric(spec_server, "pagedserve:spec_decode_num_drafts_total") or None, 10,
                      what="spec decode counters")
    drafted = metric(spec_server, "pagedserve:spec_decode_num_draft_tokens_total")
    accepted = metric(spec_server, "pagedserve:spec_decode_num_accepted_tokens_total")
    first_pos = metric(spec_server, "pagedserve:spec_decode_num_accepted_tokens_per_pos_total", position="0")
    assert drafts > 0 and drafted >= drafts and 0 < accepted <= drafted and 0 < first_pos <= drafts


@pytest.mark.parametrize("value, field", [
    ('{"method": "ngram"}', "num_speculative_tokens"),
    ('{"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": -1}', "prompt_lookup_max"),
    ('{"method": "lookahead", "num_speculative_tokens": 2}', "method"),
])
def test_bad_speculative_config_is_a_clear_error(value, field):
    with pytest.raises(ValueError, match=f"speculative_config.*{field}|{field}"):
        plan_models(make_parser().parse_args(["--speculative-config", value]))
