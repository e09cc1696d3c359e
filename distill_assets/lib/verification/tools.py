"""Tool-call verification: the function exists, its arguments are a JSON object that passes the function's
JSON schema (jsonschema, Draft 2020-12), and, where the seed gives the expected call, name and arguments match it
(arguments compared as JSON values, so key order and spacing do not matter).

Reasons, in the order they are checked: tool_call_missing (an expected call, none made), tool_call_invalid_json,
tool_call_unknown_function, tool_call_schema_violation, tool_call_mismatch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from distill_assets.lib.conversation import parse_tool_call_text, tool_calls_of

PASS, FAIL, UNVERIFIABLE = "pass", "fail", "unverifiable"
MISSING, INVALID_JSON, UNKNOWN, SCHEMA, MISMATCH = ("tool_call_missing", "tool_call_invalid_json",
                                                    "tool_call_unknown_function", "tool_call_schema_violation",
                                                    "tool_call_mismatch")


@dataclass
class ToolVerdict:
    status: str
    reason: str
    detail: dict = field(default_factory=dict)


def functions(tools: list[dict] | None) -> dict[str, dict]:
    """{name: parameters schema} of OpenAI-style tool specs."""
    out = {}
    for t in tools or []:
        fn = t.get("function", t)
        out[fn["name"]] = fn.get("parameters") or {"type": "object"}
    return out


def expected_call(reference: Any) -> dict | None:
    """A row's `reference` as the expected call {name, arguments}, when it holds one."""
    if not isinstance(reference, str) or not reference.strip().startswith("{"):
        return None
    try:
        obj = json.loads(reference)
    except ValueError:
        return None
    if isinstance(obj, dict) and isinstance(obj.get("name"), str) and isinstance(obj.get("arguments"), dict):
        return {"name": obj["name"], "arguments": obj["arguments"]}
    return None


def _arguments(raw: Any) -> tuple[dict | None, str | None]:
    if isinstance(raw, dict):
        return raw, None
    if not isinstance(raw, str):
        return None, f"arguments are {type(raw).__name__}, not JSON text"
    try:
        obj = json.loads(raw)
    except ValueError as e:
        return None, f"{e}"[:200]
    if not isinstance(obj, dict):
        return None, f"arguments must be a JSON object, got {type(obj).__name__}"
    return obj, None


def check_call(call: dict, tools: list[dict] | None) -> tuple[str | None, dict]:
    """(reason or None, detail) for one call {name, arguments[, broken]}."""
    name = call.get("name")
    detail: dict = {"name": name}
    if call.get("broken"):
        return INVALID_JSON, {**detail, "error": "the tool call line is not valid JSON"}
    args, err = _arguments(call.get("arguments"))
    if err is not None:
        return INVALID_JSON, {**detail, "error": err, "arguments": str(call.get("arguments"))[:300]}
    schemas = functions(tools)
    if name not in schemas:
        return UNKNOWN, {**detail, "known": sorted(schemas)}
    error = best_match(Draft202012Validator(schemas[name]).iter_errors(args))
    if error is not None:
        path = "/".join(str(p) for p in error.absolute_path)
        return SCHEMA, {**detail, "error": error.message[:300], "path": path or "(arguments)", "arguments": args}
    return None, {**detail, "arguments": args}


def _same(call_args: dict, expected: dict) -> bool:
    # JSON-equal: 1 and 1.0 compare equal, key order is irrelevant
    return json.loads(json.dumps(call_args, sort_keys=True)) == json.loads(json.dumps(expected, sort_keys=True))


def verify_calls(calls: list[dict], tools: list[dict] | None, expected: dict | None) -> ToolVerdict:
    """The verdict of one answer's calls against the tools and the expected call (if any)."""
    if not calls:
        if expected is not None:
            return ToolVerdict(FAIL, MISSING, {"expected": expected})
        return ToolVerdict(UNVERIFIABLE, "no_tool_call", {})
    checked = []
    for i, c in enumerate(calls):
        reason, detail = check_call(c, tools)
        checked.append(detail)
        if reason is not None:
            return ToolVerdict(FAIL, reason, {"call": i, **detail})
    if expected is not None:
        hit = any(d["name"] == expected["name"] and _same(d["arguments"], expected["arguments"]) for d in checked)
        if not hit:
            return ToolVerdict(FAIL, MISMATCH, {"expected": expected, "got": checked})
    return ToolVerdict(PASS, "ok", {"calls": checked, "matched_expected": expected is not None})


def message_calls(m: dict) -> list[dict]:
    """An assistant message's calls: structured `tool_calls`, else calls written as text lines in its content."""
    structured = [{**c, "broken": False} for c in tool_calls_of(m)]
    return structured or parse_tool_call_text(m.get("content") if isinstance(m.get("content"), str) else "")
