"""Serve-flag plans without starting engines: several --model, --served-model-name groups, a YAML
--config (a given flag wins over the file)."""
from __future__ import annotations

import pytest
from pagedserve.entrypoints.openai.cli_serve import make_parser, plan_models


def _plan(argv: list[str]):
    return plan_models(make_parser().parse_args(argv))


def test_single_model_aliases_and_positional():
    plans = _plan(["default", "--served-model-name", "smol", "smol-latest", "--max-model-len", "256"])
    assert len(plans) == 1 and plans[0].names == ["smol", "smol-latest"]
    assert plans[0].config.model_config.max_model_len == 256
    assert _plan([])[0].names == ["SmolLM2-135M-Instruct"]  # no --model: the embedded default


def test_several_models_need_one_name_group_each():
    plans = _plan(["--model", "default", "--served-model-name", "a", "--model", "default", "--served-model-name",
                   "b", "b2"])
    assert [p.names for p in plans] == [["a"], ["b", "b2"]]
    with pytest.raises(ValueError, match="served-model-name"):
        _plan(["--model", "default", "--model", "default", "--served-model-name", "a"])


def test_yaml_config(tmp_path):
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("max-model-len: 300\nport: 9001\nmax_waiting_requests: 7\nmodels:\n"
                   "  - model: default\n    served_model_name: [x, x-alias]\n    block_size: 32\n"
                   "  - {model: default, served_model_name: y, max_model_len: 128}\n")
    args = make_parser().parse_args(["--config", str(cfg), "--port", "9002"])
    plans = plan_models(args)
    assert args.port == 9002  # the command line wins
    assert [p.names for p in plans] == [["x", "x-alias"], ["y"]]
    assert plans[0].config.cache_config.block_size == 32 and plans[0].config.model_config.max_model_len == 300
    assert plans[1].config.model_config.max_model_len == 128
    assert plans[0].config.scheduler_config.max_waiting_requests == 7
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - model: default\n    no_such_setting: 1\n")
    with pytest.raises(ValueError, match="no_such_setting"):
        _plan(["--config", str(bad)])
    bad.write_text("nonsense-flag: 3\n")
    with pytest.raises(ValueError, match="nonsense-flag"):
        _plan(["--config", str(bad)])
