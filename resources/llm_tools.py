"""Tool calls for servers without native function calling: the call is asked for as a constrained JSON answer.

The embedded llama.cpp server (llama-cpp-python 0.3, SmolLM2's chat template) ignores `tools` unless
`tool_choice` names one function, and then it cannot choose among several. So for the embedded teacher (and the
in-process vLLM engine) a request with `tools` is sent instead as: the function list appended to the system
prompt, and a JSON schema `{"name": <one of the functions>, "arguments": <that function's parameters>}` as
structured output (grammar-constrained on llama.cpp, guided on vLLM). The answer is turned back into one
OpenAI-style tool call. This form always calls exactly one function; an answer cut short by `max_tokens` keeps
its broken arguments text, so verification rejects it as invalid JSON rather than guessing.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace

from resources.llm_types import ChatRequest

NATIVE, CONSTRAINED = "native", "json_schema"

TOOLS_PROMPT = ("You can call these functions:\n{listing}\n\nCall exactly one of them: answer with only a JSON "
                'object {{"name": <function name>, "arguments": {{...}}}}.')


def tool_call_schema(tools: list[dict]) -> dict:
    """One call of any of `tools`: the name fixes which parameters schema the arguments follow."""
    options = []
    for t in tools:
        fn = t.get("function", t)
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        options.append({"type": "object", "properties": {"name": {"const": fn["name"]}, "arguments": params},
                        "required": ["name", "arguments"], "additionalProperties": False})
    return options[0] if len(options) == 1 else {"anyOf": options}


def tools_listing(tools: list[dict]) -> str:
    lines = []
    for t in tools:
        fn = t.get("function", t)
        params = json.dumps(fn.get("parameters") or {}, ensure_ascii=False, separators=(",", ":"))
        lines.append(f"- {fn['name']}: {fn.get('description', '').strip()} Parameters: {params}")
    return "\n".join(lines)


def constrained_request(req: ChatRequest) -> ChatRequest:
    """The request as it goes out when the server cannot take `tools`: listing in the system prompt, schema."""
    note = TOOLS_PROMPT.format(listing=tools_listing(req.tools or []))
    msgs = [_as_text(m) for m in req.messages]
    if msgs and msgs[0].get("role") == "system":
        msgs[0]["content"] = f"{msgs[0].get('content') or ''}\n\n{note}"
    else:
        msgs.insert(0, {"role": "system", "content": note})
    return replace(req, messages=msgs, json_schema=tool_call_schema(req.tools or []), schema_name="tool_call",
                   tools=None, tool_form=CONSTRAINED)


def _as_text(m: dict) -> dict:
    """Earlier tool calls of the conversation in the same JSON shape the answer takes (the server's template
    knows no tool_calls); tool results as user turns (llama-cpp-python's server rejects a `tool` message)."""
    calls = m.get("tool_calls") or []
    if m.get("role") == "tool":
        return {"role": "user", "content": f"Function result: {m.get('content') or ''}"}
    if not calls:
        return {"role": m.get("role"), "content": m.get("content") or ""}
    lines = [json.dumps({"name": c["function"]["name"], "arguments": c["function"].get("arguments")},
                        ensure_ascii=False) for c in calls]
    text = "\n".join(([m["content"]] if m.get("content") else []) + lines)
    return {"role": m.get("role"), "content": text}


_NAME = re.compile(r'"name"\s*:\s*"([^"]*)"')
_ARGS = re.compile(r'"arguments"\s*:\s*(.*)$', re.DOTALL)


def calls_from_answer(content: str | None) -> list[dict] | None:
    """The constrained answer as one tool call; None when it names no function at all."""
    text = (content or "").strip()
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("name"), str):
        args = obj.get("arguments")
        args_text = json.dumps(args if args is not None else {}, ensure_ascii=False)
        return [{"id": "call_0", "type": "function", "function": {"name": obj["name"], "arguments": args_text}}]
    m = _NAME.search(text)
    if not m:
        return None
    a = _ARGS.search(text)
    # cut short: keep what was written, so the call is rejected for its broken JSON, not silently repaired
    raw = a.group(1).strip() if a else ""
    return [{"id": "call_0", "type": "function", "function": {"name": m.group(1), "arguments": raw}}]
