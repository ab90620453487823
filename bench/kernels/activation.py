"""SiLU-and-mul (``kernels/activation.py``) against the torch reference, timed against it."""
from __future__ import annotations

from bench.kernels.harness import ELEM_TOL, Run, fused_cases, rnd
from bench.kernels.targets import silu_and_mul, silu_and_mul_ref


def sec_silu_and_mul(r: Run) -> None:
    for m, dn, dt, T, _, inter, _, _, _ in fused_cases(r):
        def run(T=T, dn=dn, dt=dt, m=m, inter=inter):
            x = rnd((T, 2 * inter), dt, r.dev, 6, 3.0)
            c = f"{m} T={T} {dn}"
            r.check("silu_and_mul", c, silu_and_mul(x), silu_and_mul_ref(x), ELEM_TOL[dn])
            if T > 1 or r.cpu:
                t_tr = r.bench(lambda: silu_and_mul(x), fast=True)
                t_ref = r.bench(lambda: silu_and_mul_ref(x), fast=True)
                gbps = 1.5 * x.numel() * x.element_size() / (t_tr * 1e-3) / 1e9
                r.timing("silu_and_mul", c, triton_ms=t_tr, torch_ms=t_ref, speedup=t_ref / t_tr, GBps=gbps)

        r.case(f"silu_and_mul {m} T={T} {dn}", run)


SECTIONS = {"silu_and_mul": sec_silu_and_mul}
