"""The student's chat template: whether it renders tools, and the conversation as the student sees it.

Where the template renders tools and tool calls (`apply_chat_template(messages, tools=...)` shows the function
list and the call), conversations go to it as they are. SmolLM2-135M-Instruct's ChatML template does not: it
ignores `tools` and cannot render an assistant turn without string content. Then the conversation is rendered in
the documented plain-text form (lib/conversation.py: the function list appended to the system prompt, one
`{"tool_call": ...}` JSON line per call), the same form the evaluation parses back, and the caller is told so
(`TOOL_FORMAT_PLAIN`, recorded in the training and evaluation metadata).
"""

from __future__ import annotations

import json

from distill_assets.lib.conversation import plain_text_messages

TOOL_FORMAT_NATIVE, TOOL_FORMAT_PLAIN = "chat_template", "plain_text"
_PROBE_FN = "distill_probe_function"
_PROBE_ARG = "distill_probe_argument"


def tool_format(tokenizer) -> str:
    """`chat_template` when the template shows both the function list and a call, else `plain_text`."""
    cached = getattr(tokenizer, "_distill_tool_format", None)
    if cached:
        return cached
    tools = [{"type": "function", "function": {"name": _PROBE_FN, "description": "probe",
                                               "parameters": {"type": "object", "properties": {}}}}]
    msgs = [{"role": "user", "content": "hi"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_0", "type": "function",
                 "function": {"name": _PROBE_FN, "arguments": {_PROBE_ARG: 1}}}]}]
    try:
        listed = _PROBE_FN in tokenizer.apply_chat_template(msgs[:1], tools=tools, tokenize=False)
        called = _PROBE_ARG in tokenizer.apply_chat_template(msgs, tools=tools, tokenize=False)
        out = TOOL_FORMAT_NATIVE if listed and called else TOOL_FORMAT_PLAIN
    except Exception:  # a template that breaks on tool fields has no tool support
        out = TOOL_FORMAT_PLAIN
    try:
        tokenizer._distill_tool_format = out
    except AttributeError:
        pass
    return out


def _native(msgs: list[dict]) -> list[dict]:
    # Hugging Face templates take arguments as an object (OpenAI's wire form has JSON text)
    out = []
    for m in msgs:
        m = dict(m)
        if m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                fn = dict(c.get("function", {}))
                if isinstance(fn.get("arguments"), str):
                    try:
                        fn["arguments"] = json.loads(fn["arguments"])
                    except ValueError:
                        pass
                calls.append({**c, "function": fn})
            m["tool_calls"] = calls
        out.append(m)
    return out


def student_view(msgs: list[dict], tools: list[dict] | None, fmt: str) -> tuple[list[dict], list[dict] | None]:
    """(messages, tools argument) to give `apply_chat_template` for a template of format `fmt`."""
    has_tools = bool(tools) or any(m.get("tool_calls") or m.get("role") == "tool" for m in msgs)
    if not has_tools:
        return [{"role": m["role"], "content": m.get("content") or ""} for m in msgs], None
    if fmt == TOOL_FORMAT_NATIVE:
        return _native(msgs), tools or None
    return plain_text_messages(msgs, tools), None


def render(tokenizer, msgs: list[dict], tools: list[dict] | None = None, *,
           add_generation_prompt: bool = False) -> str:
    view, tools_arg = student_view(msgs, tools, tool_format(tokenizer) if tools or _has_calls(msgs) else "")
    kwargs = {"tools": tools_arg} if tools_arg else {}
    return tokenizer.apply_chat_template(view, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **kwargs)


def _has_calls(msgs: list[dict]) -> bool:
    return any(m.get("tool_calls") or m.get("role") == "tool" for m in msgs)
