"""``pagedserve router``: one OpenAI-compatible endpoint in front of many ``pagedserve serve`` replicas.

Light on purpose (aiohttp, prometheus-client, kubernetes, pyyaml only): it never imports the engine,
torch or transformers, so it runs in its own slim image (``Dockerfile.router``). Design: docs/router.md.
"""
