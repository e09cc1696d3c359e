"""The OpenAI chat-completions wire: an aiohttp keep-alive pool, status/timeout errors, Retry-After, progress."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from resources.clock import utcnow
from resources.llm_types import (
    OK,
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ChatResult,
    TokenLogprobs,
    normalize_tool_calls,
    parse_logprobs,
)


@dataclass
class Completion:
    """What one chat.completion body says, read the same way for online answers and Batch API result lines."""

    status: str  # ok | empty | malformed
    content: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str | None = None
    error: str | None = None
    logprobs: TokenLogprobs | None = None
    tool_calls: list[dict] | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def billed(self) -> bool:
        """The server reported usage for it: an empty answer is paid for, a malformed one cannot be counted."""
        return self.status != "malformed"


def parse_completion(body: bytes | str | dict, want_logprobs: bool = False) -> Completion:
    """Status, content and usage of a chat.completion (raw bytes from the wire or an already-parsed dict), and
    the answer's token logprobs when they were asked for."""
    try:
        if not isinstance(body, dict):
            body = json.loads(body)
        choice = body["choices"][0]
        content = choice["message"].get("content")
        usage = body.get("usage") or {}
        finish = choice.get("finish_reason")
        pt, ct = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        logprobs = parse_logprobs(choice) if want_logprobs else None
        tool_calls = normalize_tool_calls(choice["message"].get("tool_calls"))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        return Completion("malformed", error=f"malformed response: {type(e).__name__}: {e}"[:300])
    model = body.get("model") if isinstance(body.get("model"), str) else None
    if tool_calls:  # a call is an answer even without text (content is then null)
        return Completion(OK, content if isinstance(content, str) else "", finish, pt, ct, model,
                          logprobs=logprobs, tool_calls=tool_calls)
    if not isinstance(content, str) or not content.strip():
        return Completion("empty", None, finish, pt, ct, model, "empty content")
    return Completion(OK, content, finish, pt, ct, model, logprobs=logprobs)


def _status_message(code: int, raw: bytes) -> str:
    # the openai SDK's wording: only the body's error.message is quoted, never the whole body
    msg = f"Error code: {code}"
    try:
        body = json.loads(raw)
    except ValueError:
        return msg
    error = body.get("error", body) if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return f"{msg} - {message}" if isinstance(message, str) and message else msg


class _ChatHTTP:
    """POST {base_url}/chat/completions over one keep-alive aiohttp pool of `concurrency` connections.

    The openai SDK's request path (option building, httpx, httpcore's pool and h11) costs ~2 ms of CPU per call,
    which at hundreds of calls/s on a small machine, not the server, bounds throughput; aiohttp's C parser and
    pool cost ~0.3 ms. Headers, errors and messages are the SDK's (see APIStatusError and friends).
    """

    def __init__(self, base_url: str, api_key: str | None, concurrency: int, timeout_s: float,
                 extra_headers: dict[str, str] | None = None):
        import urllib.request
        from urllib.parse import urlsplit

        import aiohttp
        from yarl import URL

        self._aiohttp = aiohttp
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._url = URL(self.url)
        self.concurrency, self.timeout_s = concurrency, timeout_s
        self._headers = {"Authorization": f"Bearer {api_key or 'not-needed'}", "Content-Type": "application/json",
                         "Accept": "application/json", "User-Agent": f"distill aiohttp/{aiohttp.__version__}"}
        self._headers.update(extra_headers or {})
        # HTTP(S)_PROXY / NO_PROXY as httpx honours them, resolved once: aiohttp's trust_env would look them up,
        # and read ~/.netrc in a thread, on every request
        host, scheme = urlsplit(self.url).hostname or "", urlsplit(self.url).scheme
        self.proxy = None if urllib.request.proxy_bypass(host) else urllib.request.getproxies().get(scheme)
        self.session = None

    def __repr__(self) -> str:  # never the key
        return f"_ChatHTTP({self.url!r})"

    @asynccontextmanager
    async def open(self) -> AsyncIterator[_ChatHTTP]:
        """A copy with its own keep-alive pool, for one event loop (each complete() runs its own)."""
        import copy

        opened = copy.copy(self)
        opened.session = self._aiohttp.ClientSession(
            connector=self._aiohttp.TCPConnector(limit=self.concurrency),
            timeout=self._aiohttp.ClientTimeout(total=self.timeout_s),  # per attempt, connecting included
            headers=self._headers,
        )
        try:
            yield opened
        finally:
            await opened.session.close()

    async def post(self, payload: bytes) -> bytes:
        """The response body of a 2xx answer; APIStatusError, APITimeoutError or APIConnectionError otherwise."""
        try:
            async with self.session.post(self._url, data=payload, proxy=self.proxy, allow_redirects=False) as resp:
                raw = await resp.read()
                code = resp.status
                if not 200 <= code < 300:
                    raise APIStatusError(code, _status_message(code, raw), resp.headers)
                return raw
        except TimeoutError:
            raise APITimeoutError(f"Request timed out after {self.timeout_s}s.") from None
        except self._aiohttp.ClientError as e:
            raise APIConnectionError(str(e) or type(e).__name__) from e


def _run_async(coro):
    """uvloop when installed (it ships with uvicorn): about 2x cheaper socket I/O per call than asyncio's loop."""
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def _retry_after(headers) -> float | None:
    value = headers.get("retry-after-ms")
    if value:
        try:
            return float(value) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, (parsedate_to_datetime(value) - utcnow()).total_seconds())
        except (TypeError, ValueError):
            return None


class _Progress:
    """n/total, tokens/s and ETA in the Dagster log; a tqdm bar when run from a terminal."""

    def __init__(self, total: int, label: str, logger: Any, callback, cached: int = 0):
        self.total, self.label, self.log, self.callback = total, label, logger, callback
        self.done, self.tokens, self.failed = 0, 0, 0
        self.t0 = time.monotonic()
        self.last_log = 0.0
        self.bar = None
        if total and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit="call")
        if total:
            self.log.info(f"{label}: {total} call(s) to make, {cached} answered from the cache")

    def step(self, res: ChatResult) -> None:
        self.done += 1
        self.tokens += res.completion_tokens
        self.failed += 0 if res.ok else 1
        if self.bar is not None:
            self.bar.update(1)
        now = time.monotonic()
        if now - self.last_log > 5 or self.done == self.total:
            self.last_log = now
            elapsed = max(now - self.t0, 1e-6)
            rate = self.done / elapsed
            eta = (self.total - self.done) / rate if rate else 0
            self.log.info(
                f"{self.label}: {self.done}/{self.total} ({100 * self.done / self.total:.0f}%), "
                f"{self.tokens / elapsed:.1f} tok/s, {rate:.1f} calls/s, ETA {eta:.0f}s, failed {self.failed}"
            )
        if self.callback:
            self.callback(self.done, self.total, {"tokens": self.tokens, "failed": self.failed})

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()
