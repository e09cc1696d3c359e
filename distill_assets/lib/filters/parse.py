"""Parsing of raw generation rows for the filters: a malformed record gets a problem code (it is quarantined)."""

import json
import math
from typing import Any

from distill_assets.lib.conversation import conversation_problem, last_user, message_text


def parse_record(messages: Any, response: Any, has_response_col: bool) -> tuple[str | None, str, str, str]:
    """(problem or None, system, user, assistant) of one raw row's `messages` JSON: the last user turn and the
    last assistant turn's text (tool calls as their text lines) for a multi-turn conversation."""
    if messages is None or (isinstance(messages, float) and math.isnan(messages)):
        return "missing_messages", "", "", ""
    if isinstance(messages, str):
        try:
            msgs = json.loads(messages)
        except (json.JSONDecodeError, RecursionError):
            return "invalid_messages_json", "", "", ""
    else:
        msgs = messages
    if not isinstance(msgs, list) or not msgs:
        return "messages_not_a_list", "", "", ""
    if not all(isinstance(m, dict) for m in msgs):
        return "message_not_an_object", "", "", ""
    problem = conversation_problem(msgs)
    if problem is not None:
        return problem, "", "", ""
    system = msgs[0]["content"] if msgs[0].get("role") == "system" else ""
    user, assistant = last_user(msgs), message_text(msgs[-1])
    if has_response_col:
        if response is None or (isinstance(response, float) and math.isnan(response)):
            return "missing_response", system, user, assistant
        if not isinstance(response, str):
            return "non_string_response", system, user, assistant
        if response != assistant:
            return "response_mismatch", system, user, assistant
    return None, system, user, assistant


def _parse_rows(messages: list, responses: list, has_response_col: bool) -> tuple[list, list, list]:
    """parse_record over all rows: (problems, users, assistants). The common well-formed shape is checked inline
    with json's own C scanner (what json.loads runs, minus its wrapper); anything else goes through parse_record,
    so the results are its."""
    scan = json.JSONDecoder().scan_once
    problems: list = [None] * len(messages)
    users: list = [""] * len(messages)
    assistants: list = [""] * len(messages)
    for i, (m, r) in enumerate(zip(messages, responses)):
        if type(m) is str and m[:1] == "[" and (not has_response_col or type(r) is str):
            try:
                v, end = scan(m, 0)
            except (StopIteration, ValueError, RecursionError):
                v, end = None, -1
            if end == len(m) and type(v) is list:
                if len(v) == 3:
                    s0, u, a = v
                    ok = (type(s0) is dict and s0.get("role") == "system" and type(s0.get("content")) is str)
                elif len(v) == 2:
                    u, a = v
                    ok = True
                else:
                    ok = False
                if ok and type(u) is dict and type(a) is dict and u.get("role") == "user" \
                        and a.get("role") == "assistant":
                    uc, ac = u.get("content"), a.get("content")
                    if type(uc) is str and type(ac) is str and (not has_response_col or r == ac):
                        users[i], assistants[i] = uc, ac
                        continue
        p, _, u, a = parse_record(m, r, has_response_col)
        problems[i], users[i], assistants[i] = p, u, a
    return problems, users, assistants
