"""Tool calls through the teacher resource: `tools` sent (and keyed), `tool_calls` read back (an answer even with
null content), cached with the answer, and the constrained-JSON form for servers without function calling."""

import json

from resources.llm import ChatRequest, LLMResource
from resources.llm_tools import calls_from_answer, constrained_request, tool_call_schema
from tests.fakes.openai_server import FakeOpenAIServer

TOOLS = [
    {"type": "function", "function": {"name": "lookup_order", "description": "Look up an order.", "parameters": {
        "type": "object", "properties": {"order_id": {"type": "string", "pattern": "^A-[0-9]{4}$"}},
        "required": ["order_id"]}}},
    {"type": "function", "function": {"name": "start_refund", "description": "Start a refund.", "parameters": {
        "type": "object", "properties": {"order_id": {"type": "string"},
                                         "reason": {"type": "string", "enum": ["damaged", "late"]}},
        "required": ["order_id", "reason"]}}},
]
MSGS = [{"role": "system", "content": "You are the order assistant."},
        {"role": "user", "content": "Please refund A-1234, it arrived damaged."}]


def _llm(srv, **kw):
    return LLMResource(base_url=srv.base_url, model="fake", request_timeout_s=2.0, max_retries=1, **kw)


def test_tools_are_sent_keyed_read_back_and_cached(store):
    with FakeOpenAIServer(keep_bodies=True) as srv:
        with _llm(srv).session(store) as s:
            with_tools, plain = ChatRequest(MSGS, tools=TOOLS), ChatRequest(MSGS)
            assert s.key(with_tools) != s.key(plain)  # the tools are part of the cache key
            [res] = s.complete([with_tools])
            [again] = s.complete([with_tools])
    assert srv.bodies[0]["tools"] == TOOLS and "response_format" not in srv.bodies[0]
    assert res.ok and res.content == "" and res.finish_reason == "tool_calls"  # null content, still an answer
    fn = res.tool_calls[0]["function"]
    assert fn["name"] == "start_refund" and json.loads(fn["arguments"]) == {"order_id": "A-1234", "reason": "damaged"}
    assert again.cached and again.tool_calls == res.tool_calls and srv.total == 1
    row = store.query_df("SELECT status, response, tool_calls FROM teacher_calls").iloc[0]
    assert row["status"] == "ok" and json.loads(row["tool_calls"]) == res.tool_calls


def test_constrained_form_for_servers_without_function_calling(store):
    answer = '{"name": "start_refund", "arguments": {"order_id": "A-1234", "reason": "damaged"}}'
    with FakeOpenAIServer(keep_bodies=True, responder=lambda body: answer) as srv:
        with _llm(srv, tool_calls="json_schema", structured_output="json_object").session(store) as s:
            [res] = s.complete([ChatRequest(MSGS, tools=TOOLS)])
    body = srv.bodies[0]
    assert "tools" not in body and body["response_format"]["schema"] == tool_call_schema(TOOLS)
    assert "start_refund" in body["messages"][0]["content"] and body["messages"][0]["content"].startswith(
        "You are the order assistant.")
    assert res.ok and res.content == ""
    assert res.tool_calls == [{"id": "call_0", "type": "function", "function": {
        "name": "start_refund", "arguments": json.dumps({"order_id": "A-1234", "reason": "damaged"})}}]


def test_the_embedded_server_gets_the_constrained_form():
    assert LLMResource(embedded_model_path="x.gguf").tool_calls_form == "json_schema"
    assert LLMResource(base_url="http://h/v1", model="m").tool_calls_form == "native"
    assert LLMResource(base_url="http://h/v1", model="m", tool_calls="json_schema").tool_calls_form == "json_schema"


def test_a_cut_short_constrained_answer_keeps_its_broken_arguments():
    [call] = calls_from_answer('{"name": "lookup_order", "arguments": {"order_id": "A-12')
    assert call["function"]["name"] == "lookup_order" and call["function"]["arguments"] == '{"order_id": "A-12'
    assert calls_from_answer("no call at all") is None


def test_constrained_request_renders_earlier_calls_as_text():
    history = MSGS + [{"role": "assistant", "content": "", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "lookup_order", "arguments": '{"order_id": "A-1"}'}}]},
        {"role": "tool", "tool_call_id": "c", "content": "{}"}, {"role": "user", "content": "and refund it"}]
    req = constrained_request(ChatRequest(history, tools=TOOLS))
    assert req.tools is None and req.tool_form == "json_schema" and req.json_schema["anyOf"][1]["properties"][
        "name"] == {"const": "start_refund"}
    assert all(isinstance(m["content"], str) for m in req.messages)
    assert '"name": "lookup_order"' in req.messages[2]["content"]


def test_tool_calls_form_from_the_environment(monkeypatch):
    import pytest

    from distill_assets.defs.resources import llm_from_env

    monkeypatch.setenv("TEACHER_BASE_URL", "http://teacher.example/v1")
    monkeypatch.setenv("TEACHER_MODEL", "m")
    monkeypatch.setenv("TEACHER_TOOL_CALLS", "json_schema")
    assert llm_from_env("TEACHER", "teacher").describe()["tool_calls"] == "json_schema"
    monkeypatch.setenv("TEACHER_TOOL_CALLS", "sometimes")
    with pytest.raises(ValueError, match="TEACHER_TOOL_CALLS='sometimes'"):
        llm_from_env("TEACHER", "teacher")
