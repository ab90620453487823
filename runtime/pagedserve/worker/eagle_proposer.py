"""``method: eagle`` / ``eagle3``: an EAGLE head (models/eagle.py) proposes ``k`` tokens from the
target's hidden states after every step.

The head's input at position ``p`` is the token at ``p + 1`` and the target's hidden state at ``p``
(EAGLE-1: the final hidden state; EAGLE-3: three layers' inputs, fused by its ``fc``); its output there
predicts the token at ``p + 2``. After each target step the head catches up over exactly the positions
the target computed in it — every prefill chunk (the next prompt token is known), a decode's one token,
a verify entry's accepted rows — so its KV (one extra layer of the shared KV pool, like a draft model's:
same blocks, block tables, copies and swaps) follows the target's, with no stored hidden states. On a
step that samples, the last of those rows yields the first draft; ``k - 1`` one-token steps feed the
head's own output hidden state back for the others, writing KV up to ``k - 2`` positions past the
request's tokens (the scheduler's lookahead slots; later overwritten by the next catch-up). Drafts are
greedy (one-hot proposals: the rejection sampler stays exact) and travel on ``Request.spec_token_ids``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from pagedserve.config import SpeculativeConfig
from pagedserve.core.scheduler_output import ScheduledRequest, SchedulerOutput
from pagedserve.forward_context import ForwardContext, set_forward_context
from pagedserve.models.eagle import build_eagle_head, eagle3_aux_layers
from pagedserve.sampling_params import SamplingParams
from pagedserve.worker.input_batch import prepare_inputs, to_device

if TYPE_CHECKING:
    from pagedserve.worker.input_batch import HostInput
    from pagedserve.worker.model_runner import ModelRunner, ModelRunnerOutput, StepHandle

_PLAIN = SamplingParams()


class _Shifted:
    """Token ids by position where only ``[start, start + len(tokens))`` is set (what ``prepare_inputs``
    reads of a head entry: the token *after* each position)."""

    def __init__(self, start: int, tokens: list[int]) -> None:
        self.start, self.tokens = start, tokens

    def __len__(self) -> int:
        return self.start + len(self.tokens)

    def __getitem__(self, key):
        if isinstance(key, slice):
            return self.tokens[key.start - self.start:key.stop - self.start]
        return self.tokens[key - self.start]


class _HeadSeq:
    def __init__(self, request_id: str, start: int, tokens: list[int]) -> None:
        self.request_id = request_id
        self.all_token_ids = _Shifted(start, tokens)
        self.num_prompt_tokens = start + len(tokens)
        self.sampling_params = _PLAIN
        self.lora_request = None
        self.mm_features: tuple = ()


class EagleProposer:
    def __init__(self, runner: "ModelRunner", spec: SpeculativeConfig) -> None:
        assert spec.draft_model_config is not None and spec.draft_hf_config is not None
        self.runner = runner
        self.k = spec.num_speculative_tokens
        self.method = spec.method
        self.head = build_eagle_head(spec.method, spec.draft_model_config, spec.draft_hf_config,
                                     runner.config.device)
        self.num_layers = 1  # KV layers in the shared pool
        self.target = runner.model
        if spec.method == "eagle3":
            self.target.model.aux_hidden_state_layers = eagle3_aux_layers(spec.draft_hf_config,
                                                                          runner.mc.arch.num_layers)
        runner.keep_hidden = "aux" if spec.method == "eagle3" else "last"
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []  # set with the KV cache

    @torch.inference_mode()
    def propose(self, sched: SchedulerOutput | None, out: "ModelRunnerOutput", handle: "StepHandle") -> None:
        h, hidden = handle.host_input, handle.hidden
        if sched is None or h is None or hidden is None:
            return
        bs = self.runner.block_size
        entries: list[ScheduledRequest] = []
        rows: list[torch.Tensor] = []
        reqs = []
        for row, i in enumerate(h.order):
            s = sched.scheduled[i]
            req = s.request
            rid = req.request_id
            if req.spec_disabled_reason is not None or req.beam_leader is not None or req.is_finished:
                continue
            if s.spec_token_ids:
                nxt = list(out.spec[rid][0]) if rid in out.spec else []  # accepted drafts + the target's token
            else:
                ids, end = req.all_token_ids, s.start + s.num_tokens
                nxt = list(ids[s.start + 1:end])
                if end < len(ids):
                    nxt.append(ids[end])
                elif rid in out.sampled:
                    nxt.append(out.sampled[rid])
            if not nxt:
                continue
            known = s.start + len(nxt) + 1  # the request's tokens after this step
            can = s.do_sample and len(s.block_ids) * bs >= known + self.k - 2
            if s.do_sample and not can:
                req.spec_token_ids = []  # no lookahead room (just swapped back in): no drafts this step
            first = int(h.query_start_loc[row])
            entries.append(ScheduledRequest(_HeadSeq(rid, s.start, nxt), len(nxt), s.start,  # type: ignore[arg-type]
                                            s.block_ids, can))
            rows.append(hidden[first:first + len(nxt)])
            reqs.append(req)
        if not entries:
            return
        props = [(e, reqs[j]) for j, e in enumerate(entries) if e.do_sample]
        h0 = prepare_inputs(entries, bs)
        ids, hid = self._forward(h0, torch.cat([rows[i] for i in h0.order]))
        if not props:
            return
        steps = [ids]
        for step in range(1, self.k):  # one token each; the ids stay on the device (one sync at the end)
            pos = [e.start + e.num_tokens + step - 1 for e, _ in props]
            h = prepare_inputs([ScheduledRequest(_HeadSeq(e.request.request_id, p, [0]), 1, p,  # type: ignore[arg-type]
                                                 e.block_ids, True) for (e, _), p in zip(props, pos)], bs)
            ids, hid = self._forward(h, hid, steps[-1])
            steps.append(ids)
        for (_, req), d in zip(props, torch.stack(steps, dim=1).tolist()):
            req.spec_token_ids = d

    def _forward(self, h: "HostInput", hidden: torch.Tensor, input_ids: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """One head forward over ``h`` (``hidden``: its rows' hidden inputs in batch order; ``input_ids``:
        the token ids on the device, else ``h``'s). The greedy token ids and the hidden states fed to the
        next draft step, at the sampled rows, in entry order."""
        runner = self.runner
        inp = to_device(h, runner.device)
        if input_ids is not None:
            inp.input_ids = input_ids
        if self.method == "eagle3" and hidden.shape[-1] != self.head.cfg.hidden_size:
            hidden = self.head.combine_hidden_states(hidden)
        embeds = self.target.model.embed_tokens(inp.input_ids)
        with set_forward_context(ForwardContext(inp.attn_metadata, self.kv_caches, runner.backend)):
            out, nxt = self.head(embeds, hidden, inp.positions)
        rows = [r for _, r in sorted(h.sample_rows)]
        if not rows:  # a catch-up only (prefill chunks): no draft this step
            return inp.input_ids[:0], nxt[:0]
        idx = inp.logits_indices[rows] if rows != list(range(len(rows))) else inp.logits_indices
        last = out[idx]
        if self.method == "eagle3":
            ids = self.head.draft_to_target(self.head.lm_head.compute_logits(last).argmax(dim=-1))
        else:
            ids = self.target.compute_logits(last).argmax(dim=-1)
        return ids, nxt[idx]
