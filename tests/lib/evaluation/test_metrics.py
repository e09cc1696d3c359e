"""Task metrics on fixed inputs, transfer ratios, strata and bootstrap CIs."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from distill_assets.lib.evaluation import metrics as m


def test_label_accuracy_on_fixed_inputs():
    labels = ["billing", "shipping", "product_question"]
    assert m.score_response("label", "Label: billing", reference="billing", labels=labels)["score"] == 1.0
    wrong = m.score_response("label", "This is about shipping.", reference="billing", labels=labels)
    assert (wrong["score"], wrong["task_status"], wrong["metric"]) == (0.0, "fail", "accuracy")
    unparsed = m.score_response("label", "no idea", reference="billing", labels=labels)
    assert unparsed["task_status"] == "unparsed" and unparsed["score"] == 0.0
    assert m.score_response("label", "Product question", reference="product_question", labels=labels)["score"] == 1.0


def test_math_final_answer_exact_match():
    assert m.score_response("math", "3*14=42; 42-10=32. The answer is 32.", reference="32")["score"] == 1.0
    assert m.score_response("math", "The answer is 0.90", reference="0.9")["score"] == 1.0
    r = m.score_response("math", "The answer is 31.", reference="32")
    assert (r["score"], r["task_status"], r["metric"]) == (0.0, "fail", "exact_match")
    assert m.score_response("math", "I am not sure.", reference="32")["task_status"] == "unparsed"
    assert m.score_response("math", "", reference="32")["task_status"] == "no_response"


def test_code_pass_at_1_with_the_sandbox():
    tests = json.dumps(["assert add(1, 2) == 3", "assert add(-1, 1) == 0"])
    good = "```python\ndef add(a, b):\n    return a + b\n```"
    bad = "```python\ndef add(a, b):\n    return a - b\n```"
    assert m.score_response("code", good, tests=tests, entry_point="add")["score"] == 1.0
    r = m.score_response("code", bad, tests=tests, entry_point="add")
    assert (r["score"], r["task_status"], r["metric"]) == (0.0, "fail", "pass@1")
    assert m.score_response("code", "Use addition.", tests=tests, entry_point="add")["task_status"] == "unparsed"


def test_code_sandbox_infra_error_is_unknown_not_a_fail():
    fake = lambda *a, **k: SimpleNamespace(status="infra_error", reason="no sandbox", passed=0, total=1)
    r = m.score_response("code", "```python\ndef f(): pass\n```", tests='["assert f() is None"]',
                         entry_point="f", run_tests=fake)
    assert r["task_status"] == "infra_error" and math.isnan(r["score"])


def test_rouge_l_free_text_and_fallbacks():
    assert m.rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert m.rouge_l("the cat sat", "the cat sat on the mat") == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert m.rouge_l("", "ref") == 0.0 and math.isnan(m.rouge_l("x", None))
    r = m.score_response("none", "the cat sat", reference_response="the cat sat on the mat")
    assert r["metric"] == "rouge_l" and r["score"] == pytest.approx(2 / 3)
    # no reference response in the eval set: the teacher's answer is the reference
    r = m.score_response("none", "hello world", fallback_reference="hello world")
    assert r["score"] == pytest.approx(1.0) and r["detail"]["reference"] == "teacher"
    # a verifiable category's row without a gold answer (held-out production failure) falls back to ROUGE-L
    r = m.score_response("math", "a b c", reference=None, reference_response="a b c")
    assert r["metric"] == "rouge_l" and r["score"] == pytest.approx(1.0)


def test_length_bucket():
    assert [m.length_bucket(n, [64, 256]) for n in (0, 63, 64, 255, 256, 999)] == \
        ["<64", "<64", "64-256", "64-256", ">=256", ">=256"]


def test_bootstrap_ci_contains_the_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    widths = []
    for n in (20, 200, 2000):
        x = rng.binomial(1, 0.7, n).astype(float)
        lo, hi = m.bootstrap_ci(x, n_boot=2000, seed=0)
        assert lo <= x.mean() <= hi
        assert 0 <= lo < hi <= 1
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    # about 1.96 * sqrt(p(1-p)/n) each side for a large n
    assert widths[2] == pytest.approx(2 * 1.96 * math.sqrt(0.21 / 2000), rel=0.2)
    assert m.bootstrap_ci([0.5]) == (0.5, 0.5)
    assert all(math.isnan(v) for v in m.bootstrap_ci([float("nan")]))
    assert m.bootstrap_ci([1, 1, 1]) == (1.0, 1.0)


def _cat(name, target, complexity="moderate", verify="math", edges=(64, 256)):
    return SimpleNamespace(name=name, eval_target_transfer=target, complexity=complexity, verify=verify,
                           labels=None, balance=SimpleNamespace(length_buckets=list(edges)))


def test_transfer_ratio_per_category_and_overall():
    rows = []
    # maths: teacher 4/4, student 3/4 -> 0.75; classify: teacher 2/4, student 2/4 -> 1.0
    for i, (t, s) in enumerate([(1, 1), (1, 1), (1, 1), (1, 0)]):
        rows += [{"example_id": f"m{i}", "variant": "teacher", "category": "math", "score": t},
                 {"example_id": f"m{i}", "variant": "merged_student", "category": "math", "score": s}]
    for i, (t, s) in enumerate([(1, 0), (0, 1), (1, 1), (0, 0)]):
        rows += [{"example_id": f"c{i}", "variant": "teacher", "category": "classify", "score": t},
                 {"example_id": f"c{i}", "variant": "merged_student", "category": "classify", "score": s}]
    # an infra error (NaN) is left out of both sides
    rows += [{"example_id": "m9", "variant": "teacher", "category": "math", "score": 1.0},
             {"example_id": "m9", "variant": "merged_student", "category": "math", "score": float("nan")}]
    cats = {"math": _cat("math", 0.8, "complex"), "classify": _cat("classify", 0.95, "simple")}
    tr = m.transfer_ratios(pd.DataFrame(rows), cats).set_index("category")
    assert tr.loc["math", "transfer_ratio"] == pytest.approx(0.75)
    assert tr.loc["math", "n"] == 4 and not tr.loc["math", "meets_target"]
    assert tr.loc["math", "transfer_band"] == "75%-90%"
    assert tr.loc["classify", "transfer_ratio"] == pytest.approx(1.0) and tr.loc["classify", "meets_target"]
    assert tr.loc["__all__", "transfer_ratio"] == pytest.approx(5 / 6)
    assert not tr.loc["__all__", "meets_target"]


def test_score_generations_and_stratified_breakdown():
    eval_df = pd.DataFrame([
        {"eval_id": "e1", "category": "math", "prompt": "1+1?", "difficulty": "easy", "reference": "2",
         "tests": "[]", "entry_point": None, "reference_response": "The answer is 2.", "source": "eval"},
        {"eval_id": "e2", "category": "math", "prompt": "2+2?", "difficulty": "hard", "reference": "4",
         "tests": "[]", "entry_point": None, "reference_response": None, "source": "eval"},
    ])
    gens = pd.DataFrame([
        {"example_id": "e1", "variant": "teacher", "response": "The answer is 2.", "latency_s": 1.0,
         "prompt_tokens": 3, "completion_tokens": 5, "finish_reason": "stop", "error": None},
        {"example_id": "e2", "variant": "teacher", "response": "The answer is 4.", "latency_s": 1.0,
         "prompt_tokens": 3, "completion_tokens": 5, "finish_reason": "stop", "error": None},
        {"example_id": "e1", "variant": "merged_student", "response": "The answer is 2.", "latency_s": 0.1,
         "prompt_tokens": 3, "completion_tokens": 5, "finish_reason": "stop", "error": None},
        {"example_id": "e2", "variant": "merged_student", "response": "The answer is 5.", "latency_s": 0.1,
         "prompt_tokens": 3, "completion_tokens": 5, "finish_reason": "stop", "error": None},
    ])
    scored = m.score_generations(eval_df, gens, {"math": _cat("math", 0.8, edges=(3,))})
    assert len(scored) == 4
    s = scored.set_index(["variant", "example_id"])
    assert s.loc[("merged_student", "e1"), "score"] == 1.0 and s.loc[("merged_student", "e2"), "score"] == 0.0
    assert set(scored["length_bucket"]) == {">=3"}
    strata = m.stratified_breakdown(scored.assign(judge_score=np.nan), n_boot=200)
    d = strata["difficulty"].set_index(["variant", "difficulty"])
    assert d.loc[("merged_student", "easy"), "task_score"] == 1.0
    assert d.loc[("merged_student", "hard"), "task_score"] == 0.0
    assert d.loc[("teacher", "hard"), "n_task"] == 1


TOOL_SPECS = [{"type": "function", "function": {"name": "lookup_order", "parameters": {
    "type": "object", "properties": {"order_id": {"type": "string", "pattern": "^A-[0-9]{4}$"}},
    "required": ["order_id"]}}}]
EXPECTED = '{"arguments": {"order_id": "A-1001"}, "name": "lookup_order"}'


@pytest.mark.parametrize("response,score,status,reason", [
    ('{"tool_call": {"name": "lookup_order", "arguments": {"order_id": "A-1001"}}}', 1.0, "pass", "ok"),
    ('Sure.\n{"tool_call": {"name": "lookup_order", "arguments": {"order_id": "A-1001"}}}', 1.0, "pass", "ok"),
    ('{"tool_call": {"name": "lookup_order", "arguments": {"order_id": "A-1002"}}}', 0.0, "fail", "tool_call_mismatch"),
    ('{"tool_call": {"name": "find_order", "arguments": {"order_id": "A-1001"}}}', 0.0, "fail",
     "tool_call_unknown_function"),
    ('{"tool_call": {"name": "lookup_order", "arguments": {"order_id": "1001"}}}', 0.0, "fail",
     "tool_call_schema_violation"),
    ('{"tool_call": {"name": "lookup_order", "arguments": {"order_id"', 0.0, "fail", "tool_call_invalid_json"),
    ("Your order is on its way.", 0.0, "unparsed", "tool_call_missing"),
])
def test_tool_call_accuracy(response, score, status, reason):
    s = m.score_response("tool_call", response, reference=EXPECTED, tools=TOOL_SPECS)
    assert (s["metric"], s["score"], s["task_status"], s["detail"]["reason"]) == (
        "tool_call_accuracy", score, status, reason)


def test_tool_call_without_expected_call_falls_back_to_rouge():
    s = m.score_response("tool_call", "Your order is on its way.", reference=None,
                       reference_response="Your order is on its way.", tools=TOOL_SPECS)
    assert s["metric"] == "rouge_l" and s["score"] == pytest.approx(1.0)
