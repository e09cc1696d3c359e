"""The conversation model: shapes that are accepted and rejected, and the plain-text tool-call form round trip."""

import json

import pytest

from distill_assets.lib import conversation as conv

SYS = {"role": "system", "content": "Be brief."}
U1, A1 = {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}
CALL = {"role": "assistant", "content": "", "tool_calls": [
    {"id": "c1", "type": "function", "function": {"name": "lookup_order", "arguments": '{"order_id": "A-1"}'}}]}
RESULT = {"role": "tool", "tool_call_id": "c1", "content": '{"status": "shipped"}'}


@pytest.mark.parametrize("msgs", [
    [SYS, U1, A1], [U1, A1], [SYS, U1, A1, U1, A1], [U1, CALL], [U1, CALL, RESULT, A1], [U1, CALL, RESULT, A1, U1, A1],
])
def test_well_formed_conversations(msgs):
    assert conv.conversation_problem(msgs) is None


@pytest.mark.parametrize("msgs,code", [
    ([], "messages_not_a_list"), ([U1, "x"], "message_not_an_object"), ([A1, U1, A1], "wrong_roles_or_order"),
    ([U1, U1, A1], "wrong_roles_or_order"), ([U1, A1, A1], "wrong_roles_or_order"), ([U1, A1, SYS], "wrong_roles_or_order"),
    ([U1, {"role": "assistant", "content": None}], "non_string_content"), ([U1, RESULT, A1], "tool_message_without_call"),
    ([U1, A1, RESULT], "tool_message_without_call"), ([U1, CALL, A1], "missing_tool_result"),
    ([U1, A1, U1], "wrong_roles_or_order"),
    ([U1, {"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": "{}"}}]}],
     "tool_call_without_function_name"),
])
def test_malformed_conversations(msgs, code):
    assert conv.conversation_problem(msgs) == code


def test_seed_shapes():
    assert conv.conversation_problem([U1, A1, U1], ends_with=("user", "tool"), allow_system=False) is None
    assert conv.conversation_problem([U1, CALL, RESULT], ends_with=("user", "tool"), allow_system=False) is None
    assert conv.conversation_problem([SYS, U1], ends_with=("user", "tool"), allow_system=False) == "system_in_seed"


def test_tool_call_text_round_trip():
    text = conv.message_text(CALL)
    assert text == '{"tool_call": {"name": "lookup_order", "arguments": {"order_id": "A-1"}}}'
    assert conv.parse_tool_call_text("Sure.\n" + text) == [
        {"name": "lookup_order", "arguments": {"order_id": "A-1"}, "broken": False}]
    bad_args = conv.tool_call_line("f", "{not json")  # kept as a string, so it reads back invalid
    assert conv.parse_tool_call_text(bad_args)[0]["arguments"] == "{not json"
    assert conv.parse_tool_call_text('{"tool_call": {"name": "f", ')[0]["broken"]
    assert conv.parse_tool_call_text("no call here") == []


def test_plain_text_messages_for_a_template_without_tools():
    tools = [{"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object"}}}]
    out = conv.plain_text_messages([SYS, U1, CALL, RESULT, A1], tools)
    assert out[0]["content"].startswith("Be brief.\n\n" + conv.TOOLS_HEADER) and "lookup_order" in out[0]["content"]
    assert out[2] == {"role": "assistant", "content": conv.message_text(CALL)}
    assert out[3] == {"role": "tool", "content": RESULT["content"]}
    assert all(isinstance(m["content"], str) for m in out)


def test_texts_of_a_conversation():
    msgs = [SYS, U1, CALL, RESULT, A1]
    assert conv.user_text(msgs) == "Hi\n" + RESULT["content"]
    assert conv.assistant_text(msgs) == conv.message_text(CALL) + "\nHello!"
    assert conv.last_user(msgs) == "Hi" and conv.assistant_indices(msgs) == [2, 4]
    assert conv.transcript(msgs).splitlines()[0] == "User: Hi"
    assert json.loads(conv.canonical(msgs)) == msgs
