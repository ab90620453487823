"""RMSNorm (``kernels/rmsnorm.py``), plain and with the residual add fused, against the torch
reference; timed against the unfused torch ops (tokens 1 / 256 / 4096, Llama-3.1-8B and SmolLM2
hidden sizes, bf16 and fp16)."""
from __future__ import annotations

from bench.kernels.harness import ELEM_TOL, Run, fused_cases, rnd
from bench.kernels.targets import rms_norm_fused, rms_norm_ref


def sec_rmsnorm(r: Run) -> None:
    for m, dn, dt, T, hidden, _, _, _, _ in fused_cases(r):
        def run(T=T, dn=dn, dt=dt, hidden=hidden, m=m):
            x = rnd((T, hidden), dt, r.dev, 1)
            res = rnd((T, hidden), dt, r.dev, 2, 4.0)
            w = rnd((hidden,), dt, r.dev, 3, 0.3) + 1
            c = f"{m} T={T} {dn}"
            r.check("rmsnorm", c, rms_norm_fused(x, None, w, 1e-5), rms_norm_ref(x, w, 1e-5), ELEM_TOL[dn])
            out, new_res = rms_norm_fused(x, res, w, 1e-5)
            ref_res = x + res
            r.check("rmsnorm+res", c, out, rms_norm_ref(ref_res, w, 1e-5), ELEM_TOL[dn])
            r.check("rmsnorm+res:res", c, new_res, ref_res, 0.0, exact=True)
            if T > 1 or r.cpu:
                t_tr = r.bench(lambda: rms_norm_fused(x, res, w, 1e-5), fast=True)

                def ref():
                    s = x + res
                    return rms_norm_ref(s, w, 1e-5), s
                t_ref = r.bench(ref, fast=True)
                gbps = 4 * x.numel() * x.element_size() / (t_tr * 1e-3) / 1e9
                r.timing("rmsnorm+res", c, triton_ms=t_tr, torch_ms=t_ref, speedup=t_ref / t_tr, GBps=gbps)

        r.case(f"rmsnorm {m} T={T} {dn}", run)


SECTIONS = {"rmsnorm": sec_rmsnorm}
