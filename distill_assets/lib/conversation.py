"""Conversations: the OpenAI chat list that seeds, generations and training rows carry, checked in one place.

A conversation is `system?` then turns: each `user` turn is answered by an `assistant` turn; an assistant turn may
call tools (`tool_calls`, OpenAI form, `arguments` as JSON text), and is then followed by one `tool` message per
call before the next assistant turn. Seeds end on a user turn (the teacher answers it); training rows end on an
assistant turn.

The plain-text rendering of a tool call, used wherever a model without native tool support (SmolLM2's chat
template) must read or write one, and everywhere a tool call is shown as text (filters, judge, evaluation):
one line per call, `{"tool_call": {"name": "<function>", "arguments": {...}}}`. `tools_system_text` is the
matching rendering of the function list, appended to the system prompt. Training and evaluation parsing use the
same two functions, so what the student learns to write is what the scorer reads.
"""

from __future__ import annotations

import json
import re
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
TOOL_CALL_KEY = "tool_call"
TOOLS_HEADER = "You can call these functions (JSON schemas):"
TOOLS_HOWTO = ('To call one, answer with one line per call: {"tool_call": {"name": "<function>", '
               '"arguments": {...}}}')


def loads(value: Any) -> list | None:
    """A messages column value as a list (None when it is not one)."""
    if isinstance(value, list):
        return value
    if not isinstance(value, str):
        return None
    try:
        out = json.loads(value)
    except (json.JSONDecodeError, RecursionError):
        return None
    return out if isinstance(out, list) else None


def dumps(msgs: list[dict]) -> str:
    return json.dumps(msgs, ensure_ascii=False)


def canonical(msgs: list[dict]) -> str:
    """Stable text of a conversation for content hashes (seed ids, eval ids)."""
    return json.dumps(msgs, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


# ---------------------------------------------------------------- tool calls as text

def tool_calls_of(m: dict) -> list[dict]:
    """[{"name", "arguments"}] of an assistant message's tool calls; arguments as written (text or object)."""
    out = []
    for c in m.get("tool_calls") or []:
        fn = c.get("function", c) if isinstance(c, dict) else {}
        out.append({"name": fn.get("name"), "arguments": fn.get("arguments")})
    return out


def tool_call_line(name: Any, arguments: Any) -> str:
    """One call as its text line; arguments that are not valid JSON stay a string, so they read back invalid."""
    args = arguments
    if isinstance(arguments, str):
        try:
            args = json.loads(arguments)
        except ValueError:
            args = arguments
    return json.dumps({TOOL_CALL_KEY: {"name": name, "arguments": args}}, ensure_ascii=False)


def message_text(m: dict) -> str:
    """The text of a message as a model without tool support reads it: content, then one line per tool call."""
    parts = [m["content"]] if isinstance(m.get("content"), str) and m["content"].strip() else []
    parts += [tool_call_line(c["name"], c["arguments"]) for c in tool_calls_of(m)]
    return "\n".join(parts)


_CALL_LINE = re.compile(r'^\s*\{\s*"' + TOOL_CALL_KEY + r'"\s*:')


def parse_tool_call_text(text: str | None) -> list[dict]:
    """Calls written in the plain-text form: [{"name", "arguments", "broken"}]; a line that starts like a call
    but is not JSON is kept with broken=True (an invalid call, never silently ignored)."""
    calls = []
    for line in (text or "").splitlines():
        if not _CALL_LINE.match(line):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            m = re.search(r'"name"\s*:\s*"([^"]*)"', line)
            calls.append({"name": m.group(1) if m else None, "arguments": line, "broken": True})
            continue
        call = obj.get(TOOL_CALL_KEY) if isinstance(obj, dict) else None
        if isinstance(call, dict):
            calls.append({"name": call.get("name"), "arguments": call.get("arguments"), "broken": False})
        else:
            calls.append({"name": None, "arguments": line, "broken": True})
    return calls


def tools_system_text(tools: list[dict]) -> str:
    listing = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False, sort_keys=True) for t in tools)
    return f"{TOOLS_HEADER}\n{listing}\n{TOOLS_HOWTO}"


def tools_brief(tools: list[dict]) -> str:
    """One line per function, `name(param, ...): description`: the function list for a reader, not a model."""
    lines = []
    for t in tools:
        fn = t.get("function", t)
        params = ", ".join((fn.get("parameters") or {}).get("properties", {}))
        lines.append(f"{fn['name']}({params}): {fn.get('description', '')}".strip())
    return "\n".join(lines)


def plain_text_messages(msgs: list[dict], tools: list[dict] | None) -> list[dict]:
    """The conversation for a chat template without tool support: the function list appended to the system
    prompt, tool calls as text lines in the assistant content, tool results as `tool` turns."""
    out = []
    for m in msgs:
        role = m.get("role")
        if role == "assistant":
            out.append({"role": "assistant", "content": message_text(m)})
        else:
            out.append({"role": role, "content": m.get("content") or ""})
    if tools:
        note = tools_system_text(tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{note}"}
        else:
            out.insert(0, {"role": "system", "content": note})
    return out


# ---------------------------------------------------------------- shape

def _call_problem(c: Any) -> str | None:
    fn = c.get("function") if isinstance(c, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        return "tool_call_without_function_name"
    if not isinstance(fn.get("arguments"), (str, dict)):
        return "tool_call_arguments_not_text"
    return None


def conversation_problem(msgs: Any, *, ends_with: str | tuple = "assistant", allow_system: bool = True) -> str | None:
    """None when `msgs` is a well-formed conversation whose last turn's role is `ends_with` (one role or a
    tuple), else a short code."""
    ends = (ends_with,) if isinstance(ends_with, str) else tuple(ends_with)
    if not isinstance(msgs, list) or not msgs:
        return "messages_not_a_list"
    if not all(isinstance(m, dict) for m in msgs):
        return "message_not_an_object"
    roles = [m.get("role") for m in msgs]
    if any(r not in ROLES for r in roles) or "system" in roles[1:]:
        return "wrong_roles_or_order"
    if roles[0] == "system" and not allow_system:
        return "system_in_seed"
    turns = msgs[1:] if roles[0] == "system" else msgs
    if not turns or turns[0].get("role") != "user":
        return "wrong_roles_or_order"
    pending_tools = 0
    for prev, m in zip([None, *turns], turns):
        role, content = m["role"], m.get("content")
        calls = m.get("tool_calls")
        if calls is not None and (role != "assistant" or not isinstance(calls, list)):
            return "tool_calls_outside_assistant"
        if role == "assistant" and calls:
            if content is not None and not isinstance(content, str):
                return "non_string_content"
            bad = next((p for p in map(_call_problem, calls) if p), None)
            if bad:
                return bad
        elif not isinstance(content, str):
            return "non_string_content"
        p = prev["role"] if prev else None
        if role == "tool":
            if pending_tools <= 0:
                return "tool_message_without_call"
            pending_tools -= 1
        elif pending_tools:
            return "missing_tool_result"
        if role == "user" and p not in (None, "assistant") or role == "assistant" and p not in ("user", "tool"):
            return "wrong_roles_or_order"
        if role == "assistant":
            pending_tools = len(calls or [])
    if turns[-1]["role"] not in ends:
        return "wrong_roles_or_order" if ends == ("assistant",) else "seed_must_end_with_user"
    if pending_tools and turns[-1]["role"] != "assistant":
        return "missing_tool_result"
    return None


def assistant_indices(msgs: list[dict]) -> list[int]:
    return [i for i, m in enumerate(msgs) if m.get("role") == "assistant"]


def is_plain_pair(msgs: list[dict]) -> bool:
    """system?, user, assistant with string contents and no tool calls: the single-turn shape."""
    roles = [m.get("role") for m in msgs]
    return roles in (["system", "user", "assistant"], ["user", "assistant"]) and not msgs[-1].get("tool_calls")


def last_user(msgs: list[dict]) -> str:
    return next((m.get("content") or "" for m in reversed(msgs) if m.get("role") == "user"), "")


def user_text(msgs: list[dict]) -> str:
    """Every user turn and tool result, in order: what the model is given."""
    return "\n".join(m.get("content") or "" for m in msgs if m.get("role") in ("user", "tool"))


def assistant_text(msgs: list[dict]) -> str:
    """Every assistant turn, tool calls as their text lines: what the model is trained to write."""
    return "\n".join(message_text(m) for m in msgs if m.get("role") == "assistant")


def transcript(msgs: list[dict], limit: int | None = None) -> str:
    """`Role: text` lines of the non-system turns (for prompts that show a conversation to a model)."""
    names = {"user": "User", "assistant": "Assistant", "tool": "Tool result"}
    lines = [f"{names[m['role']]}: {message_text(m) if m['role'] == 'assistant' else m.get('content') or ''}"
             for m in msgs if m.get("role") in names]
    text = "\n".join(lines)
    return text if limit is None or len(text) <= limit else "…" + text[-limit:]
