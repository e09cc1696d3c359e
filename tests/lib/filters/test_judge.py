import json

import pandas as pd
import pytest

from distill_assets.lib.filters.judge import (
    RETRY_NUDGE,
    judge_frame,
    judge_schema,
    parse_judge_answer,
    score_distribution,
    score_signal,
)
from distill_assets.lib.tasks import load_tasks
from resources.llm import LLMResource
from tests.fakes.openai_server import FakeOpenAIServer


@pytest.mark.parametrize("text,score,source", [
    ("4", 4.0, "bare"), ("4.0", 4.0, "bare"), (" 5. ", 5.0, "bare"), ("**4**", 4.0, "bare"),
    ("Score: 4/5", 4.0, "score"), ("Overall quality: 4", 4.0, "overall"), ("Overall: 5 out of 5", 5.0, "overall"),
    ("**Overall quality:** 3\nGood but terse.", 3.0, "overall"), ("Rating: four", 4.0, "score"),
    ("I would rate it a 3.", 3.0, "rate"), ("8/10", 4.0, "fraction"),
    ('{"accuracy": 4, "helpfulness": 5, "coherence": 4, "overall": 4, "rationale": "fine"}', 4.0, "json"),
    ('Sure!\n```json\n{"overall": "5", "rationale": "great"}\n```', 5.0, "json"),
    ('{"scores": {"accuracy": 2, "helpfulness": 3, "coherence": 4}}', 3.0, "subscores_mean"),
    # a structured answer cut short by max_tokens inside its rationale still carries its scores
    ('{ "accuracy": 4, "helpfulness": 1, "coherence" : 2, "overall" : 3, "rationale" : "the resp', 3.0, "overall"),
    ("Accuracy: 4\nHelpfulness: 5\nCoherence: 3", 4.0, "subscores_mean"),
])
def test_parse_readable(text, score, source):
    p = parse_judge_answer(text)
    assert p.ok and p.overall == pytest.approx(score) and p.source == source


@pytest.mark.parametrize("text,problem", [
    ("7.5", "out of range"), ("0", "out of range"), ('{"overall": 9}', "out of range"), ("Score: 12/10", "out of range"),
    ("Score: 3/4", "unsupported scale"), ("garbage", "no score found"), ("", "empty answer"), (None, "empty answer"),
    ("The response lists 3 steps", "no score found"), ('{"rationale": "no number"}', "no overall"),
])
def test_parse_unreadable_is_never_a_score(text, problem):
    p = parse_judge_answer(text)
    assert not p.ok and p.overall is None and problem in p.problem


def test_json_rationale_and_subscores_kept():
    p = parse_judge_answer('{"accuracy": 4, "helpfulness": 5, "coherence": 4, "overall": 4, "rationale": "ok"}')
    assert p.scores == {"accuracy": 4.0, "helpfulness": 5.0, "coherence": 4.0, "overall": 4.0}
    assert p.rationale == "ok"


def _frame(n=4, cat="support"):
    return pd.DataFrame([{
        "generation_id": f"g{i}", "example_id": f"g{i}", "seed_id": "s", "parent_ids": "[]", "category": cat,
        "method": "response", "messages": "[]", "system_prompt": "", "instruction": f"question {i}",
        "response": f"answer {i}", "teacher_model": "fake", "params": "{}", "call_key": f"k{i}", "sample_index": 0,
        "prompt_tokens": 1, "completion_tokens": 1, "latency_s": 0.0, "finish_reason": "stop", "difficulty": "easy",
        "reference": None, "tests": "[]", "entry_point": None, "source": "seed", "evol_chain": "[]",
        "created_at": "2026-01-01"} for i in range(n)])


def scripted(body: dict) -> str:
    """question 0 -> 5, 1 -> 2, 2 -> garbage then a readable retry, 3 -> always garbage."""
    msgs = body["messages"]
    is_retry = msgs[-1]["content"] == RETRY_NUDGE
    prompt = msgs[1]["content"]
    if "question 0" in prompt:
        return '{"accuracy": 5, "helpfulness": 5, "coherence": 5, "overall": 5, "rationale": "excellent"}'
    if "question 1" in prompt:
        return "Score: 2/5. Rationale: misses the point."
    if "question 2" in prompt:
        return '{"overall": 4, "rationale": "good after all"}' if is_retry else "hmm, hard to say"
    return "7.5"


def _judge(server):
    return LLMResource(role="judge", base_url=server.base_url, model="fake-judge", max_retries=1,
                       backoff_initial_s=0.01, backoff_max_s=0.02)


def _support(**filters):
    """The demo's support category with strict judge settings pinned (the demo task relaxes them)."""
    base = load_tasks().category("support")
    pinned = {"judge_min_score": 4, "judge_keep_unparseable": False, **filters}
    return base.model_copy(update={"filters": base.filters.model_copy(update=pinned)})


def test_retry_once_then_unparseable(store):
    cat = _support()
    with FakeOpenAIServer(responder=scripted) as srv:
        with _judge(srv).session(store) as s:
            out = judge_frame(_frame(), cat, lambda reqs: s.complete(reqs, category="support"), "fake-judge")
        # 4 first calls + 2 retries (rows 2 and 3), nothing more
        assert srv.total == 6
    by = out.set_index("example_id")
    assert by.loc["g0", ["verdict", "reason", "judge_score"]].tolist() == ["kept", "ok", 5.0]
    assert by.loc["g1", ["verdict", "reason", "judge_score"]].tolist() == ["dropped", "judge_low_score", 2.0]
    assert by.loc["g1", "judge_rationale"].startswith("misses the point")
    assert by.loc["g2", ["verdict", "reason", "judge_score"]].tolist() == ["kept", "ok", 4.0]
    ev2 = json.loads(by.loc["g2", "evidence"])
    assert len(ev2["attempts"]) == 2 and ev2["attempts"][0]["call_key"] != ev2["attempts"][1]["call_key"]
    assert by.loc["g3", ["verdict", "reason", "judge_status"]].tolist() == ["dropped", "judge_unparseable", "unparseable"]
    assert pd.isna(by.loc["g3", "judge_score"])
    ev3 = json.loads(by.loc["g3", "evidence"])
    assert ev3["raw_answer"] == "7.5" and "out of range" in ev3["problem"]
    calls = store.query_df("SELECT role, request_json FROM teacher_calls")
    assert set(calls["role"]) == {"judge"}
    assert {json.loads(r)["sample_index"] for r in calls["request_json"]} == {0, 1}
    assert all(json.loads(r)["temperature"] == 0.0 for r in calls["request_json"])


def test_unparseable_can_be_kept_and_errors_are_not_low_scores(store):
    cat = _support(judge_keep_unparseable=True)
    with FakeOpenAIServer(responder=scripted) as srv:
        with _judge(srv).session(store) as s:
            out = judge_frame(_frame(), cat, lambda reqs: s.complete(reqs), "fake-judge")
    assert out.set_index("example_id").loc["g3", ["verdict", "reason"]].tolist() == ["kept", "judge_unparseable"]
    with FakeOpenAIServer(fault_rate=1.0, faults=("500",)) as srv:
        # another model name: the answers above are cached for "fake-judge"
        failing = LLMResource(role="judge", base_url=srv.base_url, model="down-judge", max_retries=1,
                              backoff_initial_s=0.01, backoff_max_s=0.02)
        with failing.session(store) as s:
            out = judge_frame(_frame(2), _support(), lambda reqs: s.complete(reqs), "fake-judge")
    assert out["reason"].tolist() == ["judge_error", "judge_error"]
    assert out["verdict"].tolist() == ["quarantined", "quarantined"]
    assert out["judge_score"].isna().all()
    assert "HTTP 500" in json.loads(out["evidence"][0])["error"]


def test_judge_requests_carry_the_verdict_schema(store):
    cat = _support(judge_max_tokens=48)
    with FakeOpenAIServer(responder=scripted, keep_bodies=True) as srv:
        with _judge(srv).session(store) as s:
            judge_frame(_frame(1), cat, lambda reqs: s.complete(reqs, category="support"), "fake-judge")
    fmt = srv.bodies[0]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "judgement"
    schema = fmt["json_schema"]["schema"]
    assert schema == judge_schema(48)
    assert list(schema["properties"]) == ["accuracy", "helpfulness", "coherence", "overall", "rationale"]
    assert schema["properties"]["overall"]["enum"] == [1, 2, 3, 4, 5]
    assert schema["properties"]["rationale"]["maxLength"] == 32  # scores (~30 tokens) + rationale fit in 48


def test_score_distribution_counts_each_score_and_the_unreadable():
    df = pd.DataFrame({"judge_score": [5.0, 4.0, 4.0, 3.67, 4.5, 2.0, float("nan"), float("nan")],
                       "judge_status": ["ok"] * 6 + ["unparseable", "error"]})
    # a mean of sub-scores or a /10 score rounds half up: 3.67 -> 4, 4.5 -> 5
    assert score_distribution(df) == {"1": 0, "2": 1, "3": 0, "4": 3, "5": 2, "unparseable": 1, "judge_error": 1}
    empty = score_distribution(df.iloc[0:0])
    assert set(empty.values()) == {0} and len(empty) == 7


@pytest.mark.parametrize("scores,signal", [
    ([4.0] * 15 + [5.0], "no signal: 94% of rows scored 4"),
    ([4.0] * 10, "no signal: 100% of rows scored 4"),
    ([4.0] * 8 + [5.0] * 2, "no signal: score std 0.40 over 10 rows (80% scored 4)"),
    ([1.0, 2.0, 3.0, 4.0, 5.0] * 2, "ok"),
    ([2.0] * 5 + [5.0] * 5, "ok"),
    ([4.0] * 9, "not assessed: only 9 parsed scores (needs 10)"),
])
def test_score_signal_flags_a_judge_that_scores_everything_alike(scores, signal):
    assert score_signal(pd.Series(scores + [float("nan")])) == signal
