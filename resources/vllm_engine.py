"""The in-process vLLM engine (gpu extra + CUDA), behind the same request/result types as HTTP."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

from resources.llm_types import OK, ChatRequest, ChatResult, LLMUnavailableError, TokenLogprobs

if TYPE_CHECKING:  # annotation only
    from resources.llm_session import LLMSession


class VLLMEngine:
    """In-process vLLM (`vllm.LLM`) for a GPU machine; same cache and ledger as the HTTP path."""

    def __init__(self, model: str | None):
        try:
            import torch

            if not torch.cuda.is_available():
                raise LLMUnavailableError("backend=vllm needs CUDA; none is available on this machine")
            import vllm  # noqa: F401  (gpu extra)
        except ImportError as e:
            raise LLMUnavailableError(
                f"backend=vllm needs the gpu extra (pip install 'distill[gpu]'): {e}"
            ) from None
        if not model:
            raise ValueError("backend=vllm needs `model` (a local path or hub id)")
        from vllm import LLM

        self.llm = LLM(model=model)
        self.model = model

    def run(self, requests: list[ChatRequest], session: LLMSession) -> list[ChatResult]:
        """One chunk of requests through `LLM.chat`; the session journals and budgets chunk by chunk."""
        from vllm import SamplingParams  # deferred: heavy optional dependency

        out = []
        params = [SamplingParams(temperature=r.temperature, max_tokens=r.max_tokens, top_p=r.top_p or 1.0,
                                 min_p=r.min_p or 0.0,
                                 seed=r.sample_index, logprobs=r.top_logprobs or None, **self._structured(r))
                  for r in requests]
        t0 = time.monotonic()
        generations = self.llm.chat([r.messages for r in requests], params, use_tqdm=sys.stderr.isatty())
        latency = (time.monotonic() - t0) / max(1, len(requests))
        for req, gen in zip(requests, generations):
            comp = gen.outputs[0]
            pt, ct = len(gen.prompt_token_ids or []), len(comp.token_ids or [])
            text = comp.text
            status = OK if text and text.strip() else "empty"
            out.append(ChatResult(session.key(req), self.model, status, text if status == OK else None,
                                  comp.finish_reason, pt, ct, latency, session.cfg.cost(pt, ct), 1,
                                  None if status == OK else "empty content",
                                  logprobs=self._logprobs(comp, req.top_logprobs) if req.top_logprobs else None))
        return out

    @staticmethod
    def _logprobs(comp, k: int) -> TokenLogprobs | None:
        """vLLM's per position {token_id: Logprob}: the top k plus the sampled token, in the HTTP shape."""
        if not comp.logprobs:
            return None
        out = TokenLogprobs([], [], [], [])
        for tid, pos in zip(comp.token_ids, comp.logprobs):
            entries = sorted(pos.items(), key=lambda kv: -kv[1].logprob)
            own = pos[tid]
            out.tokens.append(own.decoded_token or "")
            out.token_bytes.append(None)
            out.logprobs.append(float(own.logprob))
            # a sampled token outside the top k is the lowest entry, so the first k are the top k
            out.top.append([(lp.decoded_token or "", None, float(lp.logprob)) for _, lp in entries[:k]])
        return out

    @staticmethod
    def _structured(req: ChatRequest) -> dict:
        if req.json_schema is None:
            return {}
        try:  # vLLM >= 0.10
            from vllm.sampling_params import StructuredOutputsParams

            return {"structured_outputs": StructuredOutputsParams(json=req.json_schema)}
        except ImportError:
            from vllm.sampling_params import GuidedDecodingParams

            return {"guided_decoding": GuidedDecodingParams(json=req.json_schema)}
