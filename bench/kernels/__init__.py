"""Kernel checks and micro-benchmarks, one module per kernel (``python -m bench.kernels``), and the
tuning sweeps ``attn_tune`` (decode-attention launch) and ``gemm`` (linear layers)."""
