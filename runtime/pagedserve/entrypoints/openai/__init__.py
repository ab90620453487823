"""The OpenAI-compatible server: ``pagedserve serve`` / ``python -m pagedserve.entrypoints.openai.api_server``."""
