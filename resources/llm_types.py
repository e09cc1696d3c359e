"""What an LLM call is: the request, the result, the cache key and the errors, shared by every backend."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("distill.llm")


RETRYABLE_STATUS = {408, 409, 429}


def call_key(model: str, messages: list[dict], params: dict, sample_index: int) -> str:
    """Cache key of one LLM call: model, messages, sampling params and the sample index."""
    h = hashlib.sha256()
    for part in ("call", model, messages, params, int(sample_index)):
        h.update(json.dumps(part, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str).encode())
        h.update(b"\x1f")
    return h.hexdigest()[:32]


OK = "ok"


@dataclass
class ChatRequest:
    messages: list[dict]
    temperature: float = 0.7
    max_tokens: int = 512
    sample_index: int = 0
    top_p: float | None = None
    # not an OpenAI parameter (sent only when set); llama.cpp, vLLM and SGLang read it
    min_p: float | None = None
    # Structured output: a JSON schema the answer must follow (constrained decoding on llama.cpp, vLLM, OpenAI).
    # Small judges then always answer in a readable form, and no call is spent re-asking.
    json_schema: dict | None = None
    schema_name: str = "answer"
    # top-k logprobs of each generated token (OpenAI `logprobs` + `top_logprobs`); None or 0 = not asked
    top_logprobs: int | None = None
    # OpenAI-style function schemas the model may call; sent in the params, so they are part of the cache key
    tools: list[dict] | None = None
    # set by the session when `tools` went out as a constrained JSON answer (see llm_tools.py): the answer is
    # turned back into tool calls; not part of the cache key (the wire form already differs)
    tool_form: str | None = None
    tag: Any = None  # the caller's handle; not part of the cache key

    def params(self, structured_output: str = "json_schema") -> dict:
        """The sampling parameters as sent; `structured_output` picks the wire form of `json_schema`."""
        # the sample index doubles as the sampling seed: samples differ, and each is reproducible
        p = {"temperature": self.temperature, "max_tokens": self.max_tokens, "seed": self.sample_index}
        if self.top_p is not None:
            p["top_p"] = self.top_p
        if self.min_p is not None:
            p["min_p"] = self.min_p
        if self.top_logprobs:
            p["logprobs"], p["top_logprobs"] = True, int(self.top_logprobs)
        if self.json_schema is not None and structured_output != "off":
            if structured_output == "json_object":  # llama-cpp-python's form (its server rejects "json_schema")
                p["response_format"] = {"type": "json_object", "schema": self.json_schema}
            else:  # the OpenAI form, also read by vLLM, SGLang and Ollama's OpenAI endpoint
                p["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": self.schema_name, "schema": self.json_schema, "strict": True}}
        if self.tools:
            p["tools"] = self.tools
        return p


@dataclass
class ChatResult:
    call_key: str
    model: str
    status: str  # ok | empty | malformed | error | budget_exceeded
    content: str | None = None  # only ever set when status == ok ("" when the answer is only tool calls)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cost_usd: float = 0.0
    attempts: int = 0
    error: str | None = None
    cached: bool = False
    # [{"id", "type": "function", "function": {"name", "arguments": JSON text}}] when the model called tools
    tool_calls: list[dict] | None = None
    tag: Any = field(default=None, repr=False)
    reserved: tuple[float, int] | None = field(default=None, repr=False)  # budget estimate (usd, tokens)
    logprobs: TokenLogprobs | None = field(default=None, repr=False)  # when asked and the server gave them

    @property
    def ok(self) -> bool:
        return self.status == OK


@dataclass
class TokenLogprobs:
    """Per generated token: the sampled token and its logprob, and the server's top alternatives, as sent.

    Servers name tokens by text: OpenAI and vLLM add the UTF-8 `bytes`; llama-cpp-python sends `bytes: null`
    and decodes each token on its own with errors ignored, so a token holding part of a multi-byte character
    arrives as "" (and several of them collapse into one entry of its top list)."""

    tokens: list[str]
    token_bytes: list[bytes | None]
    logprobs: list[float]
    top: list[list[tuple[str, bytes | None, float]]]  # per position, best first

    def __len__(self) -> int:
        return len(self.tokens)


def _entry(e: dict) -> tuple[str, bytes | None, float]:
    raw = e.get("bytes")
    lp = e.get("logprob")
    # a logprob of None or -9999 is how some servers write "no probability mass"
    lp = float("-inf") if lp is None or float(lp) <= -9999 else float(lp)
    return str(e["token"]), (bytes(raw) if isinstance(raw, list) else None), lp


def parse_logprobs(choice: dict) -> TokenLogprobs | None:
    """`choices[0].logprobs.content[i].{token, logprob, bytes, top_logprobs[]}` (the chat-completions shape);
    None when the server sent none. A malformed entry raises (KeyError/TypeError/ValueError)."""
    block = choice.get("logprobs")
    content = block.get("content") if isinstance(block, dict) else None
    if not content:
        return None
    out = TokenLogprobs([], [], [], [])
    for pos in content:
        tok, raw, lp = _entry(pos)
        out.tokens.append(tok)
        out.token_bytes.append(raw)
        out.logprobs.append(lp)
        out.top.append(sorted((_entry(t) for t in pos.get("top_logprobs") or []), key=lambda t: -t[2]))
    return out
def normalize_tool_calls(raw: Any) -> list[dict] | None:
    """`message.tool_calls` of an answer in one shape; arguments stay the text the model wrote (JSON or not)."""
    if not isinstance(raw, list) or not raw:
        return None
    out = []
    for i, c in enumerate(raw):
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            continue
        args = fn.get("arguments")
        if not isinstance(args, str):  # some servers send an object
            args = json.dumps(args, ensure_ascii=False) if args is not None else ""
        out.append({"id": str(c.get("id") or f"call_{i}"), "type": "function",
                    "function": {"name": fn["name"], "arguments": args}})
    return out or None


class BudgetExceeded(RuntimeError):
    pass


class LLMUnavailableError(RuntimeError):
    pass


class LLMAuthError(RuntimeError):
    """The endpoint refused the credentials: no call of this session can succeed, so the run stops."""


class APIStatusError(Exception):
    """The server answered with a non-2xx status; the message is the openai SDK's ("Error code: 429 - ...")."""

    def __init__(self, status_code: int, message: str, headers: Any):
        super().__init__(message)
        self.status_code, self.headers = status_code, headers


class APIConnectionError(Exception):
    """No usable answer: connection refused, reset or dropped, or the response framing broke."""


class APITimeoutError(APIConnectionError):
    """No complete answer within `request_timeout_s`."""
