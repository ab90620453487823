"""The attention and sampling kernels leave the arguments that change from step to step
unspecialised (block table width and row offset, split count, seed), so serving never compiles a new variant mid-run
(kernels/jit.py). Checked on the real ``JITFunction`` (a subprocess without TRITON_INTERPRET)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")

PROBE = """
import json
from pagedserve.kernels.decode_attention import _decode_attn_kernel, _decode_reduce_kernel
from pagedserve.kernels.prefill_attention import _prefill_attn_kernel
from pagedserve.kernels.sampling import _sample_kernel
print(json.dumps({k.fn.__name__: sorted(p.name for p in k.params if p.do_not_specialize and p.do_not_specialize_on_alignment)
                  for k in (_decode_attn_kernel, _decode_reduce_kernel, _prefill_attn_kernel, _sample_kernel)}))
"""


def test_step_varying_arguments_are_not_specialised():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.path.join(ROOT, "runtime")
    p = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert {"block_tables_ptr", "seq_lens_ptr", "stride_bt", "stride_lb", "stride_lh"} <= set(got["_decode_attn_kernel"])
    assert {"num_splits", "stride_lb", "stride_lh"} <= set(got["_decode_reduce_kernel"])
    assert {"block_tables_ptr", "seq_lens_ptr", "query_start_loc_ptr", "stride_bt"} <= set(got["_prefill_attn_kernel"])
    assert {"seed", "stride_row", "split_len", "num_splits"} <= set(got["_sample_kernel"])
