"""Images in the scheduler (vision-language models): every step encodes whole images within
``max_num_encoder_input_tokens`` and keeps their outputs within ``encoder_cache_size``
(``core/encoder_cache_manager.py`` holds the accounting); a chunk is cut before the first image that
does not fit, and the step's output names the images to encode and the entries evicted, which the
worker's encoder cache follows. docs/multimodal.md has the whole flow."""
from __future__ import annotations

from pagedserve.config import SchedulerConfig
from pagedserve.core.encoder_cache_manager import EncoderCacheManager
from pagedserve.core.scheduler_output import SchedulerOutput
from pagedserve.request import Request


class EncoderSchedulingMixin:
    """The image part of :class:`~pagedserve.core.scheduler.Scheduler`."""

    def _init_encoder(self, scheduler_config: SchedulerConfig) -> None:
        self.encoder = EncoderCacheManager(scheduler_config.max_num_encoder_input_tokens,
                                           scheduler_config.encoder_cache_size, scheduler_config.max_num_batched_tokens)
        self._mm_blocked = False  # the last _encoder_cut left nothing to schedule

    def check_mm_item(self, length: int) -> None:
        """An image of ``length`` placeholder tokens must be encodable in one step, fit the encoder cache
        and, with disable_chunked_mm_input, fit one step's token budget (ValueError naming the flag)."""
        self.encoder.check_item(length)
        if self.config.disable_chunked_mm_input:
            cap = self.config.long_prefill_token_threshold
            room = min(self.config.max_num_batched_tokens, cap) if cap > 0 else self.config.max_num_batched_tokens
            if length > room:
                raise ValueError(f"multi_modal_data: an image of {length} tokens cannot be scheduled in one step "
                                 f"(max_num_batched_tokens / long_prefill_token_threshold allow {room}) with "
                                 "disable_chunked_mm_input (--disable-chunked-mm-input)")

    def _encoder_cut(self, req: Request, start: int, n: int) -> int:
        """Tokens of ``req`` from ``start`` that may run this step: up to ``n``, cut before the first
        image whose encoder output is neither cached nor fits the step's encoder budget and the encoder
        cache (vLLM's rule: an image is encoded whole, in the step that first reaches it); the images
        it keeps are referenced (rolled back by ``encoder.rollback`` if the request does not run)."""
        end = start + n
        rid = req.request_id
        for f in req.mm_features:
            if f.offset >= end:
                break
            if f.end <= start:
                continue
            if self.config.disable_chunked_mm_input and start < f.offset and end < f.end:
                n = f.offset - start  # not a part of this image: stop before it
                break
            if not self.encoder.acquire(rid, f):
                n = f.offset - start if start < f.offset else 0
                break
        if n <= 0:
            self._mm_blocked = True
        return n

    def _encoder_rollback(self, req: Request) -> None:
        """This step's image references of a unit that does not run this step after all."""
        for seq in self._seqs(req):
            self.encoder.rollback(seq.request_id)

    def _encoder_release(self, req: Request) -> None:
        """A unit finished or preempted: its sequences read no image any more."""
        self._encoder_rollback(req)
        for seq in self._seqs(req):
            self.encoder.release_all(seq.request_id)
        self.encoder.release_all(req.request_id)

    def _finish_encoder_step(self, out: SchedulerOutput) -> None:
        """The step's images to encode and the evictions the worker applies (an empty step is not sent
        to the worker: its evictions go with the next)."""
        enc = self.encoder
        if enc.step_new or enc.freed:
            out.encoder_mm_hashes = list(enc.step_new)
            out.num_encoder_tokens = sum(enc.step_new.values())
            if out.scheduled:
                out.free_encoder_mm_hashes = enc.take_freed()
        enc.end_step()
