"""A local OpenAI-compatible chat-completions server over real HTTP, for tests and benchmarks only.

A request with `tools` is answered with one `tool_calls` entry (content null, finish_reason "tool_calls"), made by
`tool_responder`: by default the function whose name words appear most in the last user turn, with arguments
filled from its parameters schema and the user's words (enum values, pattern matches, numbers).

It injects the faults a real deployment shows: 429 with Retry-After, 500/503, hangs past the client timeout,
connection resets, malformed JSON and empty content. It counts requests per request body, so tests can prove
that nothing is asked twice. Plain asyncio (no framework) so it can sustain hundreds of requests/s on 2 cores.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

FAULTS = ("429", "500", "hang", "reset", "malformed", "empty")


def default_responder(body: dict) -> str:
    user = next((m["content"] for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:8]
    return (f"Here is a careful and complete answer to your request ({digest}). "
            f"You asked: {user[:120]}. First, consider the details. Second, apply them step by step. "
            "Therefore, the answer is: 42")


def _user_text(body: dict) -> str:
    return next((m.get("content") or "" for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")


def _value(name: str, spec: dict, text: str):
    if "enum" in spec:
        return next((v for v in spec["enum"] if str(v).lower() in text.lower()), spec["enum"][0])
    kind = spec.get("type")
    if kind in ("integer", "number"):
        m = re.search(r"\b\d+(?:\.\d+)?\b", text)
        return (int(float(m.group(0))) if kind == "integer" else float(m.group(0))) if m else 1
    if kind == "boolean":
        return False
    # the pattern's match in the text, else an id-like token (A-1234), else a placeholder
    m = re.search(spec["pattern"].strip("^$"), text) if spec.get("pattern") else None
    m = m or re.search(r"\b[A-Z]{1,4}-?\d{3,}\b", text)
    return m.group(0) if m else f"{name} from the request"


def default_tool_responder(body: dict) -> list[dict]:
    text = _user_text(body)
    words = set(re.findall(r"[a-z]+", text.lower()))
    fns = [t["function"] for t in body["tools"]]
    fn = max(fns, key=lambda f: sum(w in words for w in f["name"].lower().split("_")))  # first on a tie
    props = (fn.get("parameters") or {}).get("properties", {})
    required = (fn.get("parameters") or {}).get("required") or list(props)
    args = {k: _value(k, props[k], text) for k in required if k in props}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:8]
    return [{"id": f"call_{digest}", "type": "function",
             "function": {"name": fn["name"], "arguments": json.dumps(args)}}]


@dataclass
class FakeOpenAIServer:
    latency_s: float = 0.0
    fault_rate: float = 0.0
    faults: tuple = FAULTS
    retry_after_s: float = 0.05
    hang_s: float = 30.0
    responder: Callable[[dict], str] = default_responder
    # (body, content) -> choices[0].logprobs, sent when the body asks `logprobs: true`; None = never sent
    logprober: Callable[[dict, str], dict] | None = None
    tool_responder: Callable[[dict], list[dict] | None] = default_tool_responder  # None: answer in text
    seed: int = 0
    model: str = "fake-teacher"
    host: str = "127.0.0.1"
    port: int = 0
    # observations
    requests: Counter = field(default_factory=Counter)  # body hash -> count (every attempt)
    answered: Counter = field(default_factory=Counter)  # body hash -> count of 200 OK with content
    faults_sent: Counter = field(default_factory=Counter)
    total: int = 0
    keep_bodies: bool = False  # keep every request body in `bodies` (tests that inspect what was sent)
    bodies: list = field(default_factory=list)
    require_key: str | None = None  # answer 401 unless `Authorization: Bearer <require_key>`
    authorizations: Counter = field(default_factory=Counter)  # Authorization header value -> count

    def __post_init__(self):
        self._rng = random.Random(self.seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server = None
        self._ready = threading.Event()
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # lifecycle -----------------------------------------------------------------------------------------------
    def start(self) -> FakeOpenAIServer:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake server did not start")
        return self

    def stop(self) -> None:
        if self._loop:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _run(self) -> None:
        try:
            import uvloop  # cheaper per request, so the server is not the bottleneck of a benchmark

            self._loop = uvloop.new_event_loop()
        except ImportError:
            self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, self.host, self.port,
                                                                          backlog=1024))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            pending = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    # protocol ------------------------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
                n = int(headers.get("content-length", "0"))
                raw = await reader.readexactly(n) if n else b""
                with self._lock:
                    self.authorizations[headers.get("authorization", "")] += 1
                if self.require_key is not None and headers.get("authorization") != f"Bearer {self.require_key}":
                    self._send(writer, 401, b'{"error": {"message": "Incorrect API key provided"}}')
                    await writer.drain()
                    continue
                if not await self._respond(method, path, raw, writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass

    def _send(self, writer, status: int, body: bytes, extra: dict | None = None) -> None:
        reason = {200: "OK", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error"}.get(status, "X")
        hdr = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(body)}",
               "connection: keep-alive"]
        hdr += [f"{k}: {v}" for k, v in (extra or {}).items()]
        writer.write(("\r\n".join(hdr) + "\r\n\r\n").encode() + body)

    async def _respond(self, method: str, path: str, raw: bytes, writer) -> bool:
        if method == "GET" and path == "/v1/models":
            self._send(writer, 200, json.dumps({"object": "list", "data": [{"id": self.model}]}).encode())
            await writer.drain()
            return True
        if path != "/v1/chat/completions":
            self._send(writer, 404, b'{"error": "not found"}')
            await writer.drain()
            return True
        body = json.loads(raw or b"{}")
        key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        with self._lock:
            self.total += 1
            self.requests[key] += 1
            if self.keep_bodies:
                self.bodies.append(body)
            fault = self._rng.choice(self.faults) if self._rng.random() < self.fault_rate else None
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if fault:
            self.faults_sent[fault] += 1
        if fault == "429":
            self._send(writer, 429, b'{"error": {"message": "rate limited"}}', {"retry-after": str(self.retry_after_s)})
        elif fault == "500":
            self._send(writer, 500, b'{"error": {"message": "boom"}}')
        elif fault == "hang":
            await asyncio.sleep(self.hang_s)
            return False
        elif fault == "reset":
            sock = writer.get_extra_info("socket")
            if sock is not None:
                import socket
                import struct

                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        elif fault == "malformed":
            self._send(writer, 200, b'{"id": "x", "choices": [{"message": {"content": "trunc')
        else:
            calls = self.tool_responder(body) if body.get("tools") and fault != "empty" else None
            content = "" if fault == "empty" or calls else self.responder(body)
            if content or calls:
                with self._lock:
                    self.answered[key] += 1
            pt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
            message = {"role": "assistant", "content": content}
            if calls:
                message = {"role": "assistant", "content": None, "tool_calls": calls}
                content = json.dumps(calls)  # for the token count
            resp = {
                "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", self.model),
                "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
                "usage": {"prompt_tokens": pt, "completion_tokens": len(content.split()),
                          "total_tokens": pt + len(content.split())},
            }
            if content and body.get("logprobs") and self.logprober is not None:
                resp["choices"][0]["logprobs"] = self.logprober(body, content)
            self._send(writer, 200, json.dumps(resp).encode())
        await writer.drain()
        return True

    # assertions helpers --------------------------------------------------------------------------------------
    def repeated_answers(self) -> int:
        """Bodies that were successfully answered more than once (a paid call made twice)."""
        return sum(c - 1 for c in self.answered.values() if c > 1)


def serve_in_subprocess(latency_s: float = 0.0, fault_rate: float = 0.0):
    """Start the fake server in its own process (so it does not share the client's GIL); returns (proc, url)."""
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.openai_server", "--latency", str(latency_s), "--fault-rate",
         str(fault_rate)],
        cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, text=True,
    )
    url = proc.stdout.readline().strip()
    return proc, url


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="fault-injecting OpenAI-compatible test server")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--fault-rate", type=float, default=0.0)
    a = ap.parse_args()
    srv = FakeOpenAIServer(latency_s=a.latency, fault_rate=a.fault_rate, port=a.port).start()
    print(srv.base_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()
