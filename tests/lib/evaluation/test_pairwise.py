"""Both-orders judging: position bias cancels; unparseable verdicts are their own state."""

import math
from types import SimpleNamespace

import pandas as pd
import pytest

from distill_assets.lib.evaluation import pairwise as pw


def _pairs(n=6):
    return pd.DataFrame({
        "pair_id": [f"p{i}" for i in range(n)], "comparison": "vs_teacher", "candidate": "merged_student",
        "opponent": "teacher", "example_id": [f"e{i}" for i in range(n)], "category": [["a", "b"][i % 2] for i in range(n)],
        "prompt": [f"question {i}" for i in range(n)], "candidate_response": [f"STUDENT {i}" for i in range(n)],
        "opponent_response": [f"TEACHER {i}" for i in range(n)],
    })


def _judge(fn):
    calls = []

    def complete(reqs, category):
        calls.extend(reqs)
        return [SimpleNamespace(status="ok", content=fn(r.messages[0]["content"])) for r in reqs]
    return complete, calls


def test_judge_always_preferring_position_a_comes_out_a_tie():
    complete, calls = _judge(lambda prompt: "A reads better.\nWinner: A")
    judged = pw.judge_pairs(_pairs(), complete)
    assert len(calls) == 12  # both orders
    assert (judged["judge_score"] == 0.5).all()
    assert (judged["judge_verdict"] == "tie").all()
    assert not judged["consistent"].any()
    wr = pw.win_rates(judged, ["candidate"]).iloc[0]
    assert wr["consistency_rate"] == 0.0 and wr["ties"] == 6
    # such a judge has no signal: no 50% win rate and no zero-width CI that would read as a measurement
    assert wr["judge_signal"] == "no signal (consistency 0%)"
    assert math.isnan(wr["win_rate"]) and math.isnan(wr["win_ci_low"]) and math.isnan(wr["win_ci_high"])


def test_judge_tying_everything_has_no_signal_even_when_consistent():
    judged = pw.judge_pairs(_pairs(), _judge(lambda p: '{"reason": "same", "winner": "tie"}')[0])
    assert judged["consistent"].all()
    wr = pw.win_rates(judged, ["candidate"]).iloc[0]
    assert wr["consistency_rate"] == 1.0 and wr["judge_signal"] == "no signal (all 6 comparisons tied)"
    assert math.isnan(wr["win_rate"]) and math.isnan(wr["win_ci_low"])


def test_judge_with_signal_shows_win_rate_and_ci():
    # the student wins on a, loses on b; every verdict agrees across both orders
    def fn(prompt):
        a = prompt.split("Response A:")[1].split("Response B:")[0]
        q = int(prompt.split("question ")[1].split()[0])
        student_wins = q % 2 == 0
        return "Winner: A" if ("STUDENT" in a) == student_wins else "Winner: B"
    judged = pw.judge_pairs(_pairs(8), _judge(fn)[0])
    wr = pw.win_rates(judged, ["candidate"], n_boot=500).iloc[0]
    assert wr["judge_signal"] == "ok" and wr["consistency_rate"] == 1.0
    assert wr["win_rate"] == 0.5 and wr["win_ci_low"] < 0.5 < wr["win_ci_high"]
    by_cat = pw.win_rates(judged, ["category"]).set_index("category")
    assert by_cat.loc["a", "win_rate"] == 1.0 and by_cat.loc["b", "win_rate"] == 0.0


def test_a_few_inconsistent_pairs_keep_the_signal():
    answers = {}
    for i in range(4):  # three consistent wins, one pair that flips with the order
        answers[(f"p{i}", "ab")] = ("ok", "Winner: A")
        answers[(f"p{i}", "ba")] = ("ok", "Winner: B" if i < 3 else "Winner: A")
    wr = pw.win_rates(pw.combine(_pairs(4), answers), ["candidate"]).iloc[0]
    assert wr["consistency_rate"] == 0.75 and wr["judge_signal"] == "ok"
    assert wr["win_rate"] == pytest.approx(3.5 / 4)


def _prefers(who):
    def fn(prompt):
        a = prompt.split("Response A:")[1].split("Response B:")[0]
        return "Winner: A" if who in a else "Winner: B"
    return fn


def test_consistent_judge_counts_wins_and_losses():
    judged = pw.judge_pairs(_pairs(), _judge(_prefers("STUDENT"))[0])
    assert (judged["judge_score"] == 1.0).all() and judged["consistent"].all()
    judged = pw.judge_pairs(_pairs(), _judge(_prefers("TEACHER"))[0])
    assert (judged["judge_verdict"] == "loss").all()
    wr = pw.win_rates(judged, ["category"])
    assert list(wr["win_rate"]) == [0.0, 0.0] and list(wr["consistency_rate"]) == [1.0, 1.0]


def test_tie_counts_half_and_both_orders_use_the_judge_prompt():
    complete, calls = _judge(lambda p: "They are equally good. Winner: tie")
    judged = pw.judge_pairs(_pairs(2), complete)
    assert (judged["judge_score"] == 0.5).all() and judged["consistent"].all()
    first, second = calls[0].messages[0]["content"], calls[1].messages[0]["content"]
    assert "Which response is better? Consider accuracy, helpfulness, and clarity." in first
    assert first.index("STUDENT 0") < first.index("TEACHER 0") and second.index("TEACHER 0") < second.index("STUDENT 0")
    assert calls[0].temperature == 0.0


def test_unparseable_and_errors_are_their_own_states():
    answers = {("p0", "ab"): ("ok", "Winner: A"), ("p0", "ba"): ("ok", "I like both a lot"),
               ("p1", "ab"): ("ok", "Winner: B"), ("p1", "ba"): ("error", None),
               ("p2", "ab"): ("ok", "Winner: A"), ("p2", "ba"): ("ok", "Winner: B")}
    judged = pw.combine(_pairs(3), answers).set_index("pair_id")
    assert judged.loc["p0", "judge_verdict"] == "unparseable" and math.isnan(judged.loc["p0", "judge_score"])
    assert judged.loc["p1", "judge_verdict"] == "judge_error"
    assert judged.loc["p2", "judge_verdict"] == "win"
    wr = pw.win_rates(judged.reset_index(), ["candidate"]).iloc[0]
    assert (wr["n_pairs"], wr["n_valid"], wr["unparseable"], wr["judge_errors"], wr["win_rate"]) == (3, 1, 1, 1, 1.0)


@pytest.mark.parametrize("text,expected", [
    ("Winner: A", "A"), ("winner: b", "B"), ("Winner: tie", "tie"), ("B", "B"), ("Tie.", "tie"),
    ("Response A is wrong but B is right.\nWinner: B", "B"), ("**Winner:** A", "A"),
    ("Winner: Response B", "B"), ("7.5", None), ("a banana", None), ("", None), (None, None),
    ("Both are fine, hard to say", None),
    ('{"reason": "B is correct", "winner": "B"}', "B"), ('{"reason": "Winner: A looked good", "winner": "tie"}', "tie"),
    ('{"reason": "same", "winner" : " A "}', "A"), ('{"reason": "cut off', None),
])
def test_parse_verdict(text, expected):
    assert pw.parse_verdict(text) == expected


def test_verdicts_are_asked_for_as_structured_output():
    complete, calls = _judge(lambda p: '{"reason": "same", "winner": "tie"}')
    judged = pw.judge_pairs(_pairs(1), complete, max_tokens=48)
    assert judged["judge_verdict"].tolist() == ["tie"]
    schema = calls[0].json_schema
    assert list(schema["properties"]) == ["reason", "winner"]  # reason first: the judge reasons, then decides
    assert schema["properties"]["winner"]["enum"] == ["A", "B", "tie"]
    assert schema["properties"]["reason"]["maxLength"] == (48 - 16) * 2
