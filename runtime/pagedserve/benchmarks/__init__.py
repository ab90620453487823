"""Benchmarks: ``pagedserve bench serve`` (online, against the HTTP server), ``throughput`` and
``latency`` (offline, the engine alone). Datasets shared by all of them: :mod:`.datasets`."""
