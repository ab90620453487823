"""``LLM``: offline batched generation, as in vLLM (``from pagedserve import LLM, SamplingParams``)."""
from __future__ import annotations

import itertools
from typing import Any, Sequence

from tqdm import tqdm

from pagedserve import startup
from pagedserve.engine.arg_utils import EngineArgs
from pagedserve.core.beam_search import BeamSearchOutput, BeamSearchSequence
from pagedserve.engine.llm_engine import LLMEngine, PromptType
from pagedserve.lora.request import LoRARequest
from pagedserve.outputs import RequestOutput
from pagedserve.sampling_params import BeamSearchParams, SamplingParams

_GEN_CONFIG_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def _ready() -> None:
    """The engine is ready: log the start-up phases once (``pagedserve.startup``)."""
    startup.mark("ready")
    startup.current().log_once()


class LLM:
    def __init__(self, model: str | None = None, *, dtype: str = "auto", max_model_len: int | None = None,
                 gpu_memory_utilization: float = 0.9, block_size: int = 16, max_num_seqs: int | None = None,
                 max_num_batched_tokens: int | None = None, seed: int = 0, device: str | None = None,
                 skip_tokenizer_init: bool = False, use_tqdm: bool = True, **kwargs: Any) -> None:
        startup.begin("LLM").mark("imports")  # the interpreter and imports, up to this call
        args = EngineArgs(model=model, dtype=dtype, max_model_len=max_model_len,
                          gpu_memory_utilization=gpu_memory_utilization, block_size=block_size,
                          max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                          seed=seed, device=device, **kwargs)
        self.llm_engine = LLMEngine.from_engine_args(args, use_tqdm=use_tqdm,
                                                     skip_tokenizer_init=skip_tokenizer_init)
        self._counter = itertools.count()
        _ready()

    @classmethod
    def from_engine_args(cls, args: EngineArgs, use_tqdm: bool = True, skip_tokenizer_init: bool = False) -> "LLM":
        startup.begin("LLM").mark("imports")
        llm = cls.__new__(cls)
        llm.llm_engine = LLMEngine.from_engine_args(args, use_tqdm=use_tqdm, skip_tokenizer_init=skip_tokenizer_init)
        llm._counter = itertools.count()
        _ready()
        return llm

    def shutdown(self) -> None:
        """Release the engine (tensor-parallel worker processes included)."""
        self.llm_engine.shutdown()

    def reset_prefix_cache(self) -> int:
        """Forget the prefix cache's free blocks (as vLLM's ``LLM.reset_prefix_cache``); returns how many."""
        return self.llm_engine.reset_prefix_cache()

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def get_tokenizer(self) -> Any:
        return self.llm_engine.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        """Defaults from the model's generation_config.json (as vLLM's ``--generation-config auto``)."""
        gen = self.llm_engine.config.model_config.generation_config
        kw = {k: gen[k] for k in _GEN_CONFIG_KEYS if gen.get(k) is not None}
        if gen.get("do_sample") is False:
            kw["temperature"] = 0.0
        return SamplingParams(**kw)

    def generate(self, prompts: PromptType | Sequence[PromptType],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool = True, priority: list[int] | None = None,
                 lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None) -> list[RequestOutput]:
        """``lora_request``: one adapter for every prompt, or one (or None: the base model) per prompt."""
        if isinstance(prompts, (str, dict)) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # one prompt (text, token ids or dict)
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = self.get_default_sampling_params()
        params = list(sampling_params) if isinstance(sampling_params, (list, tuple)) else [sampling_params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"sampling_params: got {len(params)} for {len(prompts)} prompts")
        loras = list(lora_request) if isinstance(lora_request, (list, tuple)) else [lora_request] * len(prompts)
        if len(loras) != len(prompts):
            raise ValueError(f"lora_request: got {len(loras)} for {len(prompts)} prompts")
        ids = []
        try:
            for i, (p, sp) in enumerate(zip(prompts, params)):
                rid = str(next(self._counter))
                self.llm_engine.add_request(rid, p, sp, priority=priority[i] if priority else 0, lora_request=loras[i])
                ids.append(rid)
        except Exception:
            self.llm_engine.abort_request(ids)
            raise
        return self._run(ids, use_tqdm)

    def beam_search(self, prompts: PromptType | Sequence[PromptType], params: BeamSearchParams,
                    use_tqdm: bool = False) -> list[BeamSearchOutput]:
        """Beam search in the engine core (beams share KV blocks copy-on-write), scored like HF
        transformers' ``generate(num_beams=params.beam_width, length_penalty=..., early_stopping=...)``.
        Returns, per prompt, the ``beam_width`` best sequences (prompt tokens included), best first."""
        outs = self.generate(prompts, params.to_sampling_params(), use_tqdm=use_tqdm)
        results = []
        for o in outs:
            seqs = []
            for c in o.outputs:
                cum = c.cumulative_logprob if c.cumulative_logprob is not None else 0.0
                score = cum / (max(1, len(c.token_ids)) ** params.length_penalty)
                seqs.append(BeamSearchSequence(list(o.prompt_token_ids) + list(c.token_ids), c.text, cum, score,
                                               c.finish_reason))
            results.append(BeamSearchOutput(seqs))
        return results

    def chat(self, messages: list[dict[str, str]] | list[list[dict[str, str]]],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
             use_tqdm: bool = True, add_generation_prompt: bool = True,
             chat_template: str | None = None, tools: list[dict] | None = None,
             continue_final_message: bool = False, chat_template_kwargs: dict | None = None
             ) -> list[RequestOutput]:
        """Render each conversation with the chat template (``tools`` rendered by the template, as the
        server does) and generate; parse tool calls from the text with a tool parser if needed."""
        convs = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        from pagedserve.entrypoints.chat_utils import render_chat

        prompts = [{"prompt_token_ids": render_chat(self.get_tokenizer(), c, add_generation_prompt, chat_template,
                                                    tools, continue_final_message, chat_template_kwargs)}
                   for c in convs]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def _run(self, ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        engine = self.llm_engine
        done: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(ids), desc="Processed prompts", disable=not use_tqdm)
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    done[out.request_id] = out
                    bar.update(1)
        bar.close()
        return [done[i] for i in ids]
