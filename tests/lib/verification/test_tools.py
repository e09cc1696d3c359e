"""Tool-call verification: known-bad calls are rejected with their reason, good ones pass, expected calls match."""

import json

import pytest

from distill_assets.lib.verification.tools import (
    INVALID_JSON,
    MISMATCH,
    MISSING,
    SCHEMA,
    UNKNOWN,
    check_call,
    expected_call,
    message_calls,
    verify_calls,
)

TOOLS = [
    {"type": "function", "function": {"name": "lookup_order", "parameters": {
        "type": "object", "properties": {"order_id": {"type": "string", "pattern": "^A-[0-9]{4}$"}},
        "required": ["order_id"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "start_refund", "parameters": {
        "type": "object", "properties": {"order_id": {"type": "string"}, "amount": {"type": "number"},
                                         "reason": {"type": "string", "enum": ["damaged", "wrong_item"]}},
        "required": ["order_id", "reason"]}}},
]


def call(name, arguments):
    return {"name": name, "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}


def test_wrong_function_is_rejected():
    v = verify_calls([call("cancel_order", {"order_id": "A-1000"})], TOOLS, None)
    assert (v.status, v.reason) == ("fail", UNKNOWN) and v.detail["known"] == ["lookup_order", "start_refund"]


@pytest.mark.parametrize("args", ['{"order_id": "A-1000"', "order_id=A-1000", "", '["A-1000"]', "null"])
def test_invalid_json_arguments_are_rejected(args):
    v = verify_calls([call("lookup_order", args)], TOOLS, None)
    assert (v.status, v.reason) == ("fail", INVALID_JSON) and v.detail["error"]


@pytest.mark.parametrize("args,path,needle", [
    ({"order_id": "1000"}, "order_id", "does not match"),
    ({}, "(arguments)", "'order_id' is a required property"),
    ({"order_id": "A-1000", "extra": 1}, "(arguments)", "Additional properties"),
    ({"order_id": 1000}, "order_id", "is not of type 'string'"),
])
def test_schema_violations_are_rejected(args, path, needle):
    v = verify_calls([call("lookup_order", args)], TOOLS, None)
    assert (v.status, v.reason) == ("fail", SCHEMA) and v.detail["path"] == path and needle in v.detail["error"]


def test_enum_violation_is_a_schema_violation():
    v = verify_calls([call("start_refund", {"order_id": "A-1", "reason": "bored"})], TOOLS, None)
    assert v.reason == SCHEMA and v.detail["path"] == "reason"


def test_a_valid_call_passes_and_must_match_the_expected_one():
    good = call("start_refund", {"reason": "damaged", "order_id": "A-1450", "amount": 10})
    expected = {"name": "start_refund", "arguments": {"order_id": "A-1450", "amount": 10.0, "reason": "damaged"}}
    v = verify_calls([good], TOOLS, expected)  # key order and 10 vs 10.0 do not matter: JSON-equal
    assert (v.status, v.reason) == ("pass", "ok") and v.detail["matched_expected"]
    other = verify_calls([call("start_refund", {"order_id": "A-1451", "reason": "damaged"})], TOOLS, expected)
    assert (other.status, other.reason) == ("fail", MISMATCH) and other.detail["expected"] == expected
    wrong_fn = verify_calls([call("lookup_order", {"order_id": "A-1450"})], TOOLS, expected)
    assert wrong_fn.reason == MISMATCH


def test_no_call_fails_only_when_one_was_expected():
    assert verify_calls([], TOOLS, {"name": "lookup_order", "arguments": {}}).reason == MISSING
    assert verify_calls([], TOOLS, None).status == "unverifiable"


def test_every_call_of_an_answer_is_checked():
    v = verify_calls([call("lookup_order", {"order_id": "A-1000"}), call("lookup_order", {"order_id": "x"})],
                     TOOLS, None)
    assert v.reason == SCHEMA and v.detail["call"] == 1


def test_calls_written_as_text_lines_are_read_and_broken_lines_rejected():
    good = {"role": "assistant", "content": 'Looking it up.\n{"tool_call": {"name": "lookup_order", '
                                            '"arguments": {"order_id": "A-1000"}}}'}
    assert verify_calls(message_calls(good), TOOLS, None).status == "pass"
    broken = {"role": "assistant", "content": '{"tool_call": {"name": "lookup_order", "arguments": {"order_id"'}
    v = verify_calls(message_calls(broken), TOOLS, None)
    assert v.reason == INVALID_JSON and v.detail["name"] == "lookup_order"
    structured = {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "lookup_order", "arguments": '{"order_id": "A-1"}'}}]}
    assert verify_calls(message_calls(structured), TOOLS, None).reason == SCHEMA


def test_expected_call_reads_only_call_shaped_references():
    assert expected_call('{"name": "f", "arguments": {"a": 1}}') == {"name": "f", "arguments": {"a": 1}}
    assert expected_call("42") is None and expected_call(None) is None and expected_call('{"name": "f"}') is None


def test_check_call_returns_the_parsed_arguments():
    reason, detail = check_call(call("lookup_order", {"order_id": "A-1234"}), TOOLS)
    assert reason is None and detail["arguments"] == {"order_id": "A-1234"}
