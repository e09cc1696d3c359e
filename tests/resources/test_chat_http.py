"""The teacher's HTTP transport (aiohttp) against the fault-injecting local server: what goes on the wire, how
each fault maps to the openai SDK's error kinds and messages, keep-alive and the concurrency bound."""

import asyncio
import json
import socket

import pytest

from resources.llm import ChatRequest, LLMResource
from resources.llm_http import _ChatHTTP, _status_message
from resources.llm_types import APIConnectionError, APIStatusError, APITimeoutError
from tests.fakes.openai_server import FakeOpenAIServer


class Wiretap(FakeOpenAIServer):
    """Also keeps every request head, counts connections and the most requests in flight at once."""

    def __post_init__(self):
        super().__post_init__()
        self.heads: list[str] = []
        self.connections = 0
        self.in_flight = 0
        self.max_in_flight = 0

    async def _handle(self, reader, writer):
        self.connections += 1
        heads = self.heads

        class Tap:
            async def readuntil(self, sep):
                head = await reader.readuntil(sep)
                heads.append(head.decode("latin-1"))
                return head

            async def readexactly(self, n):
                return await reader.readexactly(n)

        await super()._handle(Tap(), writer)

    async def _respond(self, method, path, raw, writer):
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await super()._respond(method, path, raw, writer)
        finally:
            self.in_flight -= 1


def _post(base_url, payload=b'{"model": "m", "messages": []}', timeout_s=1.0, api_key="k"):
    async def go():
        async with _ChatHTTP(base_url, api_key, 4, timeout_s).open() as http:
            return await http.post(payload)

    return asyncio.run(go())


def _raises(base_url, exc, **kw):
    with pytest.raises(exc) as info:
        _post(base_url, **kw)
    return info.value


def test_status_errors_carry_code_message_and_headers():
    with FakeOpenAIServer(fault_rate=1.0, faults=("429",), retry_after_s=0.25) as srv:
        e = _raises(srv.base_url, APIStatusError)
    assert e.status_code == 429 and str(e) == "Error code: 429 - rate limited"
    assert e.headers.get("Retry-After") == "0.25"  # case-insensitive, as _retry_after reads it
    with FakeOpenAIServer(fault_rate=1.0, faults=("500",)) as srv:
        assert str(_raises(srv.base_url, APIStatusError)) == "Error code: 500 - boom"
    with FakeOpenAIServer() as srv:  # {"error": "not found"}: no message field, so only the code
        e = _raises(srv.base_url.replace("/v1", "/nope"), APIStatusError)
    assert e.status_code == 404 and str(e) == "Error code: 404"
    assert _status_message(502, b"<html>bad gateway</html>") == "Error code: 502"
    assert _status_message(400, b'{"message": "bad schema"}') == "Error code: 400 - bad schema"


def test_hang_is_a_timeout_and_reset_or_refused_a_connection_error():
    with FakeOpenAIServer(fault_rate=1.0, faults=("hang",), hang_s=5) as srv:
        e = _raises(srv.base_url, APITimeoutError, timeout_s=0.3)
    assert isinstance(e, APIConnectionError) and "timed out" in str(e)  # the SDK's hierarchy
    with FakeOpenAIServer(fault_rate=1.0, faults=("reset",)) as srv:
        e = _raises(srv.base_url, APIConnectionError)
    assert not isinstance(e, APITimeoutError) and str(e)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    e = _raises(f"http://127.0.0.1:{port}/v1", APIConnectionError)
    assert not isinstance(e, APITimeoutError)


def test_malformed_and_empty_bodies_are_returned_for_the_session_to_judge():
    with FakeOpenAIServer(fault_rate=1.0, faults=("malformed",)) as srv:
        raw = _post(srv.base_url)
    with pytest.raises(ValueError):
        json.loads(raw)


def test_wire_form_bearer_key_and_body(store):
    req = ChatRequest(messages=[{"role": "user", "content": "héllo"}], temperature=0.2, max_tokens=7, sample_index=3,
                      top_p=0.9, min_p=0.0)
    with Wiretap(keep_bodies=True) as srv:
        llm = LLMResource(base_url=srv.base_url + "/", model="m", api_key="sk-wire", request_timeout_s=2.0)
        with llm.session(store) as s:
            assert s.complete([req])[0].ok
            expected = {"model": "m", "messages": req.messages, **s.params(req)}
    assert srv.bodies == [expected]
    assert expected["top_p"] == 0.9 and expected["min_p"] == 0.0  # min_p goes out when set, even as 0
    head = srv.heads[0]
    assert head.startswith("POST /v1/chat/completions HTTP/1.1\r\n")  # a trailing slash on base_url is fine
    assert "\r\nAuthorization: Bearer sk-wire\r\n" in head and "\r\nContent-Type: application/json\r\n" in head


def test_no_key_sends_a_placeholder_bearer(store):
    with Wiretap() as srv:
        with LLMResource(base_url=srv.base_url, model="m").session(store) as s:
            assert s.complete([ChatRequest(messages=[{"role": "user", "content": "x"}])])[0].ok
    assert "\r\nAuthorization: Bearer not-needed\r\n" in srv.heads[0]


def test_concurrency_bound_keep_alive_and_order(store):
    reqs = [ChatRequest(messages=[{"role": "user", "content": f"p{i}"}]) for i in range(40)]
    with Wiretap(latency_s=0.02) as srv:
        with LLMResource(base_url=srv.base_url, model="m", max_concurrency=4).session(store) as s:
            res = s.complete(reqs)
    assert srv.max_in_flight == 4  # bounded, and the bound is used
    assert srv.connections == 4  # kept alive: one connection per slot, not per request
    assert [f"You asked: p{i}." in r.content for i, r in enumerate(res)] == [True] * 40


def test_session_maps_transport_errors_to_statuses(store):
    with FakeOpenAIServer(fault_rate=1.0, faults=("hang",), hang_s=3) as srv:
        llm = LLMResource(base_url=srv.base_url, model="m", request_timeout_s=0.2, max_retries=1,
                          backoff_initial_s=0.01)
        with llm.session(store) as s:
            res = s.complete([ChatRequest(messages=[{"role": "user", "content": "x"}])])[0]
    assert res.status == "error" and res.attempts == 2 and res.content is None
    assert res.error == "gave up after 2 attempt(s): timeout after 0.2s"
    with FakeOpenAIServer(fault_rate=1.0, faults=("reset",)) as srv:
        llm = LLMResource(base_url=srv.base_url, model="m", max_retries=0)
        with llm.session(store) as s:
            res = s.complete([ChatRequest(messages=[{"role": "user", "content": "x"}])])[0]
    assert res.status == "error" and res.error.startswith("gave up after 1 attempt(s): connection error: ")


def test_proxy_from_environment_resolved_once(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    assert _ChatHTTP("http://teacher:8000/v1", None, 1, 1.0).proxy is None
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    assert _ChatHTTP("http://teacher:8000/v1", None, 1, 1.0).proxy == "http://proxy:3128"
    assert _ChatHTTP("https://teacher/v1", None, 1, 1.0).proxy is None  # only HTTP_PROXY is set
    monkeypatch.setenv("NO_PROXY", "teacher")
    assert _ChatHTTP("http://teacher:8000/v1", None, 1, 1.0).proxy is None


def test_key_not_in_repr():
    assert "sk-hidden" not in repr(_ChatHTTP("http://h/v1", "sk-hidden", 1, 1.0))
