"""Generation of conversations: seed conversations continued, user-simulator turns up to conversation_turns, a
tool call ends the conversation, a failed later turn keeps the conversation as it stood."""

import json

import pandas as pd

from distill_assets.lib.generation.plan import generate
from distill_assets.lib.records import load_seed_file
from distill_assets.lib.tasks import load_tasks
from resources.llm import ChatRequest, ChatResult, call_key


class FakeSession:
    """Answers like a teacher: the user simulator with a follow-up, the assistant with text or a tool call."""

    def __init__(self, fail_turn: int | None = None, calls_tools: bool = False):
        self.requests: list[ChatRequest] = []
        self.fail_turn, self.calls_tools = fail_turn, calls_tools
        self.budget_hit = None

    def complete(self, requests, category=None, label="", mode=None):
        out = []
        for r in requests:
            self.requests.append(r)
            key = call_key("fake", r.messages, r.params(), r.sample_index)
            text = r.messages[-1]["content"]
            n_assistant = sum(m["role"] == "assistant" for m in r.messages)
            if "role-playing a user" in text:
                out.append(ChatResult(key, "fake", "ok", "User: And how long will that take?", "stop", 5, 7))
            elif self.fail_turn is not None and n_assistant + 1 >= self.fail_turn:
                out.append(ChatResult(key, "fake", "error", error="HTTP 500"))
            elif r.tools and self.calls_tools:
                calls = [{"id": "c", "type": "function", "function": {"name": "lookup_order",
                                                                      "arguments": '{"order_id": "A-1001"}'}}]
                out.append(ChatResult(key, "fake", "ok", "", "tool_calls", 10, 3, tool_calls=calls))
            else:
                out.append(ChatResult(key, "fake", "ok", f"Answer number {n_assistant + 1}.", "stop", 10, 4))
        return out


def _support(turns: int):
    c = load_tasks().category("support")
    return c.model_copy(update={"conversation_turns": turns, "samples_per_prompt": 1,
                                "methods": c.methods.model_copy(update={"self_instruct": None, "evol_instruct": None,
                                                                        "task_specific": None})})


def _seeds(category, rows):
    base = {"reference": None, "tests": "[]", "entry_point": None, "messages": None, "source": "seed",
            "difficulty": "easy"}
    return pd.DataFrame([{**base, **r} for r in rows])


def test_conversations_grow_to_the_configured_turns():
    cat = _support(3)
    seeds = _seeds(cat, [{"seed_id": "s1", "prompt": "My parcel is late."}])
    df, stats = generate(cat, seeds, FakeSession())
    [row] = df.to_dict("records")
    msgs = json.loads(row["messages"])
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    assert msgs[3]["content"] == "And how long will that take?"  # the label is stripped
    assert row["instruction"] == "And how long will that take?" and row["response"] == "Answer number 3."
    calls = json.loads(row["turn_calls"])
    assert [c["role"] for c in calls] == ["assistant", "user", "assistant", "user", "assistant"]
    assert row["completion_tokens"] == 4 + 7 + 4 + 7 + 4 and stats.calls == 5 and stats.phases == 5


def test_a_seed_conversation_is_continued_not_restarted():
    cat = _support(2)
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, how can I help?"},
             {"role": "user", "content": "Where is my order?"}]
    seeds = _seeds(cat, [{"seed_id": "s1", "prompt": "Where is my order?", "messages": json.dumps(turns)}])
    session = FakeSession()
    df, _ = generate(cat, seeds, session)
    msgs = json.loads(df["messages"].iloc[0])
    assert msgs[1:4] == turns and msgs[4]["role"] == "assistant" and len(msgs) == 5  # 2 assistant turns: done
    assert session.requests[0].messages[1:] == turns  # the teacher saw the whole conversation


def test_a_tool_call_ends_the_conversation_and_is_kept_in_openai_form():
    c = load_tasks().category("order_tools").model_copy(update={"conversation_turns": 3})
    seeds = load_seed_file(c.seeds, c).head(2)
    session = FakeSession(calls_tools=True)
    df, stats = generate(c, seeds, session)
    assert stats.calls == 2 and all(r.tools == c.tools_json() for r in session.requests)
    last = json.loads(df["messages"].iloc[0])[-1]
    assert last["content"] == "" and last["tool_calls"][0]["function"]["name"] == "lookup_order"
    assert df["response"].iloc[0] == '{"tool_call": {"name": "lookup_order", "arguments": {"order_id": "A-1001"}}}'


def test_a_failed_later_turn_keeps_the_conversation_so_far():
    cat = _support(3)
    seeds = _seeds(cat, [{"seed_id": "s1", "prompt": "My parcel is late."}])
    df, stats = generate(cat, seeds, FakeSession(fail_turn=2))
    msgs = json.loads(df["messages"].iloc[0])
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"] and stats.failed == 1
