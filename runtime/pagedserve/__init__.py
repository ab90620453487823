"""pagedserve: a paged-KV LLM inference engine with an OpenAI-compatible server."""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "EngineArgs", "LLMEngine", "__version__"]


def __getattr__(name: str):  # lazy: `import pagedserve` stays cheap (no torch) for the CLI and the server
    if name == "LLM":
        from pagedserve.entrypoints.llm import LLM

        return LLM
    if name == "SamplingParams":
        from pagedserve.sampling_params import SamplingParams

        return SamplingParams
    if name in ("RequestOutput", "CompletionOutput"):
        from pagedserve import outputs

        return getattr(outputs, name)
    if name == "EngineArgs":
        from pagedserve.engine.arg_utils import EngineArgs

        return EngineArgs
    if name == "LLMEngine":
        from pagedserve.engine.llm_engine import LLMEngine

        return LLMEngine
    raise AttributeError(name)
