"""The filters on conversations: quality checks every assistant turn (evidence says which), the judge sees the
whole conversation and rates the last turn, verification checks every turn's tool calls, dedup compares whole
conversations and tool calls like labels."""

import json

import numpy as np
import pandas as pd
import pytest

from distill_assets.lib.contamination import training_texts
from distill_assets.lib.conversation import message_text
from distill_assets.lib.filters.judge import judge_messages
from distill_assets.lib.filters.quality import quality_filter
from distill_assets.lib.filters.verify import apply_verification
from distill_assets.lib.tasks import load_tasks
from distill_assets.lib.tokenizer import student_tokenizer

GOOD = ("To reset your password, open the account page, choose 'Forgot password' and follow the link we "
        "email you. The link is valid for one hour, so use it soon.")
GOOD2 = ("Your new password takes effect at once on every device; you may need to sign in again on the app. "
         "If the link has expired, simply ask for a new one from the same page.")


def row(turns, eid="e1"):
    msgs = [{"role": "system", "content": "Be helpful."}, *turns]
    users = [m for m in turns if m["role"] == "user"]
    return {"example_id": eid, "messages": json.dumps(msgs), "instruction": users[-1]["content"],
            "response": message_text(turns[-1]), "reference": None, "seed_id": "s", "category": "support"}


def conversation(second_answer):
    return [{"role": "user", "content": "How do I reset my password?"}, {"role": "assistant", "content": GOOD},
            {"role": "user", "content": "And then?"}, {"role": "assistant", "content": second_answer}]


@pytest.fixture(scope="module")
def tok():
    return student_tokenizer()


def test_quality_checks_every_assistant_turn(tok):
    cat = load_tasks().category("support")
    df = pd.DataFrame([row(conversation(GOOD2), "ok"), row(conversation("Ok."), "short2"),
                       row([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Ok."},
                            {"role": "user", "content": "And?"}, {"role": "assistant", "content": GOOD2}], "short1")])
    out = quality_filter(df, cat, tokenizer=tok).set_index("example_id")
    ok = json.loads(out.loc["ok", "evidence"])
    assert out.loc["ok", "keep"] and ok["assistant_turns"] == 2
    for eid, turn, k in (("short2", 4, 2), ("short1", 2, 1)):
        ev = json.loads(out.loc[eid, "evidence"])
        assert out.loc[eid, "reason"] == "too_short" and (ev["turn"], ev["assistant_turn"]) == (turn, k)
    assert out.loc["short2", "response"] == "Ok."  # the rows keep their own columns


def test_judge_sees_the_conversation_and_rates_the_last_turn():
    cat = load_tasks().category("support")
    [_, user] = judge_messages(row(conversation(GOOD2)), cat)
    text = user["content"]
    assert "Conversation so far:" in text and "User: How do I reset my password?" in text
    assert "Final request: And then?" in text and text.index(GOOD2) > text.index("Final request")


def _call_turn(name, args):
    return {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": name, "arguments": args}}]}


def test_verification_of_tool_calls_in_every_turn():
    cat = load_tasks().category("order_tools")
    expected = json.dumps({"name": "lookup_order", "arguments": {"order_id": "A-1001"}})
    ask = {"role": "user", "content": "Where is A-1001?"}
    rows = [
        {**row([ask, _call_turn("lookup_order", '{"order_id": "A-1001"}')], "good"), "reference": expected},
        {**row([ask, _call_turn("lookup_order", '{"order_id": "A-1002"}')], "mismatch"), "reference": expected},
        {**row([ask, _call_turn("find_order", '{"order_id": "A-1001"}')], "unknown"), "reference": expected},
        {**row([ask, _call_turn("lookup_order", '{"order_id": A-1001}')], "badjson"), "reference": expected},
        {**row([ask, _call_turn("lookup_order", '{"order_id": "1001"}')], "schema"), "reference": expected},
        {**row([ask, {"role": "assistant", "content": "Let me check."}], "nocall"), "reference": expected},
        {**row([ask, _call_turn("start_refund", '{"order_id": "A-1001"}'),
                {"role": "tool", "tool_call_id": "c", "content": "{}"}, {"role": "user", "content": "status?"},
                _call_turn("lookup_order", '{"order_id": "A-1001"}')], "earlier_bad"), "reference": expected},
        row([ask, {"role": "assistant", "content": "Which order do you mean?"}], "text_only"),
    ]
    out = apply_verification(pd.DataFrame(rows), cat).set_index("example_id")
    want = {"good": ("kept", "ok"), "mismatch": ("dropped", "tool_call_mismatch"),
            "unknown": ("dropped", "tool_call_unknown_function"), "badjson": ("dropped", "tool_call_invalid_json"),
            "schema": ("dropped", "tool_call_schema_violation"), "nocall": ("dropped", "tool_call_missing"),
            "earlier_bad": ("dropped", "tool_call_schema_violation"), "text_only": ("kept", "no_tool_call")}
    assert {k: (out.loc[k, "verdict"], out.loc[k, "reason"]) for k in want} == want
    ev = json.loads(out.loc["earlier_bad", "evidence"])
    assert (ev["turn"], ev["assistant_turn"]) == (2, 1) and "'reason' is a required property" in ev["error"]


def test_dedup_texts_of_conversations_and_tool_calls():
    calls = pd.DataFrame([row([{"role": "user", "content": f"Where is {oid}?"},
                               _call_turn("lookup_order", json.dumps({"order_id": oid}))], oid)
                          for oid in ("A-1001", "A-1002")])
    t = training_texts(calls)
    assert t["short_answer"].all() and t["dedup_text"].str.startswith('{"tool_call"').all()
    talk = training_texts(pd.DataFrame([row(conversation(GOOD2))]))
    assert not talk["short_answer"].any() and talk["dedup_text"].iloc[0].startswith("User: How do I reset")
    assert talk["response"].iloc[0] == GOOD + "\n" + GOOD2  # every assistant turn
    plain = training_texts(pd.DataFrame([row(conversation(GOOD2)[:2])]))
    assert plain["response"].iloc[0] == GOOD == plain["dedup_text"].iloc[0] and not plain["short_answer"].iloc[0]
    assert np.array_equal(plain["instruction"], ["How do I reset my password?"])


def test_a_category_can_skip_the_judge():
    from distill_assets.lib.filters.judge import judge_frame

    cat = load_tasks().category("order_tools")
    assert cat.filters.judge_enabled is False  # the demo: verification checks the calls exactly

    def no_calls(reqs):
        raise AssertionError("the judge must not be called")

    out = judge_frame(pd.DataFrame([row(conversation(GOOD2))]), cat, no_calls)
    assert out["keep"].all() and out["reason"].tolist() == ["judge_disabled"]
    assert out["judge_status"].tolist() == ["disabled"]
