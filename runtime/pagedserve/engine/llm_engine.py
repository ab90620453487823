"""``LLMEngine``: the synchronous engine — input processing (tokenize, validate, fan out
``n``), the engine core, and output processing, in one process."""
from __future__ import annotations

import time
from typing import Any

from pagedserve import startup
from pagedserve.config import EngineConfig
from pagedserve.engine.arg_utils import EngineArgs
from pagedserve.engine.core import EngineCore
from pagedserve.engine.output_processor import OutputProcessor, child_request_id
from pagedserve.engine.mm_processor import MultiModalProcessor
from pagedserve.lora.request import LoRARequest
from pagedserve.multimodal.inputs import MultiModalFeature
from pagedserve.request import Request
from pagedserve.outputs import RequestOutput
from pagedserve.sampling_params import SamplingParams
from pagedserve.tokenizer import load_tokenizer

PromptType = str | list[int] | dict[str, Any]


class InputProcessor:
    """Prompt → token ids, sampling params resolved against the model (eos ids, max_tokens)."""

    def __init__(self, config: EngineConfig, tokenizer: Any) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.eos_ids = list(config.model_config.arch.eos_token_ids)
        if tokenizer is not None and tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in self.eos_ids:
            self.eos_ids.append(tokenizer.eos_token_id)
        self.mm: MultiModalProcessor | None = None  # images → placeholders + features (vision-language models)
        arch = config.model_config.arch
        if arch.is_multimodal:
            self.mm = MultiModalProcessor(config.model_config.model, arch, config.model_config.limit_mm_per_prompt)

    def process_prompt(self, prompt: PromptType) -> tuple[str | None, list[int], list[MultiModalFeature]]:
        """(text, token ids, images) of a prompt; a dict prompt may carry ``multi_modal_data``."""
        if isinstance(prompt, dict) and prompt.get("mm_features"):  # preprocessed by the server (chat images)
            feats = prompt["mm_features"]
            if self.mm is None or not all(isinstance(f, MultiModalFeature) for f in feats):
                raise ValueError("mm_features: a list of MultiModalFeature for a vision-language model")
            return prompt.get("prompt"), self._check_ids(prompt["prompt_token_ids"]), list(feats)
        if isinstance(prompt, dict) and prompt.get("multi_modal_data") is not None:
            if self.mm is None:
                raise ValueError(f"multi_modal_data: {self.config.model_config.served_model_name} is a text-only "
                                 f"model ({self.config.model_config.arch.architecture}); it takes no images")
            text = prompt.get("prompt")
            ids, feats = self.mm.process(text, prompt["multi_modal_data"],
                                         add_special_tokens=prompt.get("add_special_tokens", True))
            return text, ids, feats
        text, ids = self.tokenize(prompt)
        return text, ids, []

    def tokenize(self, prompt: PromptType) -> tuple[str | None, list[int]]:
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                return prompt.get("prompt"), self._check_ids(prompt["prompt_token_ids"])
            prompt = prompt.get("prompt")
            if not isinstance(prompt, str):
                raise ValueError("prompt: a dict prompt needs 'prompt' (str) or 'prompt_token_ids' (list[int])")
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("prompt: text prompts need a tokenizer (skip_tokenizer_init is set)")
            return prompt, self.tokenizer.encode(prompt)
        if isinstance(prompt, (list, tuple)):
            return None, self._check_ids(list(prompt))
        raise ValueError(f"prompt must be a string, a list of token ids or a dict, got {type(prompt).__name__}")

    def _check_ids(self, ids: Any) -> list[int]:
        vocab = self.config.model_config.arch.vocab_size
        if not isinstance(ids, (list, tuple)) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise ValueError("prompt_token_ids must be a list of integers")
        bad = [t for t in ids if t < 0 or t >= vocab]
        if bad:
            raise ValueError(f"prompt_token_ids: token id {bad[0]} is outside the vocabulary [0, {vocab})")
        return list(ids)

    def max_tokens(self, params: SamplingParams, prompt_len: int) -> int:
        room = self.config.model_config.max_model_len - prompt_len
        return max(1, min(params.max_tokens, room) if params.max_tokens is not None else room)

    @staticmethod
    def child_params(request_id: str, params: SamplingParams) -> dict[str, SamplingParams]:
        """``n`` parallel samples become ``n`` engine requests; seeded children get seed + index. The
        engine core prefills the prompt once (child 0) and forks the others from it copy-on-write.
        A beam search is one engine request (child 0 runs the beam group; the other children get the
        2nd, 3rd, ... best hypotheses when it ends)."""
        n = params.n
        out = {}
        for i in range(n):
            cid = child_request_id(request_id, i, n)
            if params.use_beam_search:
                cp = params.clone()
                cp.child_of = (request_id, i, n, "beam")
            elif n == 1:
                cp = params
            else:
                cp = params.clone(n=1, best_of=1, seed=None if params.seed is None else params.seed + i)
                cp.child_of = (request_id, i, n, "sample")
            out[cid] = cp
        return out

    def check_lora(self, lora_request: LoRARequest | None) -> LoRARequest | None:
        if lora_request is None:
            return None
        if not isinstance(lora_request, LoRARequest):
            raise ValueError(f"lora_request must be a pagedserve.lora.request.LoRARequest, got "
                             f"{type(lora_request).__name__}")
        if self.config.lora_config is None:
            raise ValueError("lora_request: LoRA is not enabled; start the engine with enable_lora=True "
                             "(--enable-lora)")
        return lora_request

    @staticmethod
    def with_cache_salt(prompt: "PromptType", params: SamplingParams, cache_salt: str | None) -> SamplingParams:
        """A ``cache_salt`` given beside the prompt (argument or prompt dict key) travels in the params."""
        salt = cache_salt if cache_salt is not None else (prompt.get("cache_salt") if isinstance(prompt, dict) else None)
        if salt is None or salt == params.cache_salt:
            return params
        return params.clone(cache_salt=salt)


class LLMEngine:
    def __init__(self, config: EngineConfig, use_tqdm: bool = True, skip_tokenizer_init: bool = False) -> None:
        self.config = config
        self.tokenizer = None if skip_tokenizer_init else load_tokenizer(config.model_config.tokenizer or config.model_config.model)
        self.processor = InputProcessor(config, self.tokenizer)
        startup.mark("tokenizer")
        self.core = EngineCore(config, use_tqdm=use_tqdm)
        self.output_processor = OutputProcessor(self.tokenizer)

    @classmethod
    def from_engine_args(cls, args: EngineArgs, use_tqdm: bool = True, skip_tokenizer_init: bool = False
                         ) -> "LLMEngine":
        config = args.create_engine_config()
        startup.mark("config")
        return cls(config, use_tqdm=use_tqdm, skip_tokenizer_init=skip_tokenizer_init)

    def add_request(self, request_id: str, prompt: PromptType, params: SamplingParams | None = None,
                    arrival_time: float | None = None, priority: int = 0, cache_salt: str | None = None,
                    lora_request: LoRARequest | None = None) -> None:
        params = self.processor.with_cache_salt(prompt, params or SamplingParams(), cache_salt)
        lora_request = self.processor.check_lora(lora_request)
        if request_id in self.output_processor.states:
            raise ValueError(f"request_id {request_id!r} is already in use")
        text, ids, mm = self.processor.process_prompt(prompt)
        max_tokens = self.processor.max_tokens(params, len(ids))
        self.core.scheduler.check_fits(len(ids), params, max_tokens)
        children = self.processor.child_params(request_id, params)
        self.output_processor.add_request(request_id, text, ids, params, children)
        arrival = time.time() if arrival_time is None else arrival_time
        try:
            for cid, cp in children.items():
                self.core.add_request(Request(cid, ids, cp, eos_token_ids=self.processor.eos_ids,
                                              arrival_time=arrival, priority=priority, max_tokens=max_tokens,
                                              lora_request=lora_request, mm_features=mm))
        except Exception:
            self.abort_request(request_id)
            raise

    def abort_request(self, request_id: str | list[str]) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        self.core.abort_requests(self.output_processor.abort_requests(ids))

    def step(self) -> list[RequestOutput]:
        core_outputs = self.core.step()
        outputs, stopped = self.output_processor.process_outputs(core_outputs)
        if stopped:
            self.core.abort_requests(stopped)  # ended by a stop string: free its blocks now
        return outputs

    def has_unfinished_requests(self) -> bool:
        return self.output_processor.has_unfinished_requests() or self.core.has_unfinished_requests()

    def reset_prefix_cache(self) -> int:
        return self.core.reset_prefix_cache()

    def shutdown(self) -> None:
        """Stop the engine core (and its tensor-parallel worker processes, if any)."""
        self.core.shutdown()

    def get_num_unfinished_requests(self) -> int:
        return len(self.output_processor.states)
