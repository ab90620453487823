"""Engine flags parsed as the CLI does, down to the engine config they make."""
from __future__ import annotations

import argparse

import pytest

from pagedserve.entrypoints.engine_flags import add_engine_flags, engine_args_from


def _parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(exit_on_error=False)
    add_engine_flags(p)
    return p.parse_args(list(argv))


def test_hf_overrides_reach_the_model_config(smollm2_dir):
    ea = engine_args_from(_parse("--model", "default", "--device", "cpu", "--hf-overrides",
                                 '{"num_hidden_layers": 2, "rms_norm_eps": 0.001}'))
    arch = ea.create_engine_config().model_config.arch
    assert (arch.num_layers, arch.rms_norm_eps) == (2, 0.001)


@pytest.mark.parametrize("bad, msg", [("[1]", "must be a JSON object"), ("{x", "not valid JSON")])
def test_hf_overrides_must_be_a_json_object(bad, msg):
    with pytest.raises(argparse.ArgumentError, match=msg):
        _parse("--hf-overrides", bad)
