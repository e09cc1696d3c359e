"""Task metrics by the category's `verify` kind, transfer ratios, stratified breakdowns and bootstrap CIs.

Every function takes and returns plain values or DataFrames. Scores are in [0, 1]; an example whose score
cannot be known (a sandbox infra error) is NaN with its own `task_status`, never silently a 0.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from distill_assets.lib.conversation import parse_tool_call_text
from distill_assets.lib.evaluation.signal import OK as SIGNAL_OK
from distill_assets.lib.evaluation.signal import has_signal, judge_signal
from distill_assets.lib.verification.code import extract_code as _extract_code
from distill_assets.lib.verification.labels import labels_match, parse_label
from distill_assets.lib.verification.math import answers_match, extract_final_answer
from distill_assets.lib.verification.sandbox import run_code_tests
from distill_assets.lib.verification.tools import expected_call, verify_calls

TEACHER = "teacher"
BASE = "base_student"
MERGED = "merged_student"
OVERALL = "__all__"

# task_status values
PASS, FAIL, UNPARSED, INFRA_ERROR, SCORED, NO_RESPONSE = "pass", "fail", "unparsed", "infra_error", "scored", "no_response"

METRIC_BY_VERIFY = {"label": "accuracy", "math": "exact_match", "code": "pass@1", "none": "rouge_l",
                    "tool_call": "tool_call_accuracy"}

# Typical transfer bands by task complexity (display only; the gate uses each category's eval_target_transfer).
TRANSFER_BANDS = {"simple": (0.95, None), "moderate": (0.85, 0.95), "complex": (0.75, 0.90)}

_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def count_tokens(text: str | None) -> int:
    """A tokenizer-free length (words and punctuation); used when no student tokenizer is given."""
    return len(_TOKEN.findall(text or ""))


def length_bucket(n_tokens: int, edges: Iterable[int]) -> str:
    """'<64', '64-256', '>=256' for edges [64, 256] (the task file's balance.length_buckets)."""
    edges = sorted(int(e) for e in edges)
    if not edges:
        return "all"
    if n_tokens < edges[0]:
        return f"<{edges[0]}"
    for lo, hi in zip(edges, edges[1:]):
        if lo <= n_tokens < hi:
            return f"{lo}-{hi}"
    return f">={edges[-1]}"


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer  # deferred: heavy optional dependency

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str | None, reference: str | None) -> float:
    """ROUGE-L F-measure (rouge-score, Porter stemming); NaN when there is no reference."""
    if reference is None or not str(reference).strip():
        return float("nan")
    if prediction is None or not str(prediction).strip():
        return 0.0
    return float(_rouge_scorer().score(str(reference), str(prediction))["rougeL"].fmeasure)


# --- verifiable answers (logic lives in lib/verification; imported, not duplicated) -----------------------------

def extract_label(response: str, labels: list[str]) -> str | None:
    return parse_label(response, labels).label


def math_answer_correct(response: str, reference: str) -> tuple[bool | None, str | None]:
    """(correct, extracted answer); correct is None when no final answer can be found in the response."""
    answer = extract_final_answer(response).answer
    if answer is None:
        return None, None
    return bool(answers_match(answer, reference)), answer


def extract_code(response: str, entry_point: str | None = None) -> str | None:
    return _extract_code(response, entry_point)


def _tests_list(tests: Any) -> list[str]:
    if tests is None or (isinstance(tests, float) and math.isnan(tests)):
        return []
    if isinstance(tests, str):
        try:
            tests = json.loads(tests) if tests.strip() else []
        except json.JSONDecodeError:
            return [tests]
    return [str(t) for t in tests]


def _text(v: Any) -> str | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return str(v)


def score_response(verify: str, response: str | None, *, reference: str | None = None, tests: Any = None,
                   entry_point: str | None = None, reference_response: str | None = None,
                   labels: list[str] | None = None, fallback_reference: str | None = None,
                   code_timeout_s: float = 5.0, code_memory_mb: int = 512,
                   run_tests: Callable | None = None, tools: list[dict] | None = None) -> dict:
    """Score one response: {'metric', 'score', 'task_status', 'detail' (dict)}.

    verify: label -> accuracy, math -> exact match of the final answer, code -> pass@1 in the sandbox,
    tool_call -> the call(s) in the response's plain-text tool-call lines (lib/conversation.py) must be valid
    for `tools` and match the expected call in `reference` (lib/verification/tools.py), as verification checks;
    none -> ROUGE-L against the reference response (or `fallback_reference`, the teacher's, when the
    eval set has none).
    """
    metric = METRIC_BY_VERIFY[verify]
    response, reference = _text(response), _text(reference)
    entry_point = _text(entry_point)
    if response is None or not response.strip():
        return {"metric": metric, "score": 0.0, "task_status": NO_RESPONSE, "detail": {"reason": "empty response"}}
    if (verify in ("label", "math") and not reference) or (verify == "code" and not _tests_list(tests)) or \
            (verify == "tool_call" and expected_call(reference) is None):
        # e.g. a held-out production failure: no gold answer or tests, only the expected response
        verify, metric = "none", METRIC_BY_VERIFY["none"]
    if verify == "label":
        got = extract_label(response, labels or [])
        if got is None:
            return {"metric": metric, "score": 0.0, "task_status": UNPARSED,
                    "detail": {"reason": "no label from the label set found", "expected": reference}}
        ok = labels_match(got, reference)
        return {"metric": metric, "score": float(ok), "task_status": PASS if ok else FAIL,
                "detail": {"predicted": got, "expected": reference}}
    if verify == "math":
        correct, answer = math_answer_correct(response, reference or "")
        if correct is None:
            return {"metric": metric, "score": 0.0, "task_status": UNPARSED,
                    "detail": {"reason": "no final answer found", "expected": reference}}
        return {"metric": metric, "score": float(correct), "task_status": PASS if correct else FAIL,
                "detail": {"predicted": answer, "expected": reference}}
    if verify == "tool_call":
        calls = parse_tool_call_text(response)
        v = verify_calls(calls, tools, expected_call(reference))
        status = PASS if v.status == "pass" else (UNPARSED if not calls else FAIL)
        return {"metric": metric, "score": float(v.status == "pass"), "task_status": status,
                "detail": {"reason": v.reason, **v.detail}}
    if verify == "code":
        code = extract_code(response, entry_point)
        if not code:
            return {"metric": metric, "score": 0.0, "task_status": UNPARSED, "detail": {"reason": "no code found"}}
        res = (run_tests or run_code_tests)(code, _tests_list(tests), entry_point, timeout_s=code_timeout_s, memory_mb=code_memory_mb)
        status = getattr(res, "status", "infra_error")
        detail = {"sandbox_status": status, "reason": getattr(res, "reason", None),
                  "passed": getattr(res, "passed", None), "total": getattr(res, "total", None)}
        if status == "pass":
            return {"metric": metric, "score": 1.0, "task_status": PASS, "detail": detail}
        if status in ("fail", "timeout"):  # a timeout is the code's fault (an endless loop), not the sandbox's
            return {"metric": metric, "score": 0.0, "task_status": FAIL, "detail": detail}
        # the sandbox itself broke: unknown, not a failure of the model
        return {"metric": metric, "score": float("nan"), "task_status": INFRA_ERROR, "detail": detail}
    ref = _text(reference_response) or fallback_reference
    score = rouge_l(response, ref)
    return {"metric": metric, "score": score, "task_status": SCORED if not math.isnan(score) else INFRA_ERROR,
            "detail": {"reference": "eval_set" if _text(reference_response) else "teacher"}}


def score_generations(eval_df: pd.DataFrame, generations: pd.DataFrame, categories: dict[str, Any],
                      token_counter: Callable[[str], int] | None = None, **score_kwargs) -> pd.DataFrame:
    """One row per (example, variant) with the task metric, ROUGE-L and the response-length bucket.

    eval_df: eval_id, category, prompt, difficulty, reference, tests, entry_point, reference_response, source.
    generations: example_id (== eval_id), variant, response, latency_s, prompt_tokens, completion_tokens,
    finish_reason, error. categories: name -> Category (verify, labels, balance.length_buckets).
    The length bucket is taken from the teacher's response (or the reference response), so every variant of
    one example sits in the same stratum.
    """
    counter = token_counter or count_tokens
    ev = eval_df.rename(columns={"eval_id": "example_id"}).drop_duplicates("example_id").set_index("example_id")
    teacher_resp = (generations[generations["variant"] == TEACHER].set_index("example_id")["response"]
                    if not generations.empty else pd.Series(dtype=object))
    rows = []
    for g in generations.itertuples(index=False):
        if g.example_id not in ev.index:
            continue
        e = ev.loc[g.example_id]
        cat = categories[e["category"]]
        t_resp = _text(teacher_resp.get(g.example_id)) if g.example_id in teacher_resp.index else None
        s = score_response(cat.verify, g.response, reference=e.get("reference"), tests=e.get("tests"),
                           entry_point=e.get("entry_point"), reference_response=e.get("reference_response"),
                           labels=cat.labels, fallback_reference=t_resp,
                           tools=cat.tools_json() if getattr(cat, "tools", None) else None, **score_kwargs)
        ref_text = t_resp or _text(e.get("reference_response")) or ""
        rows.append({
            "example_id": g.example_id, "variant": g.variant, "category": e["category"],
            "difficulty": _text(e.get("difficulty")) or "unknown", "source": _text(e.get("source")) or "eval",
            "prompt": e["prompt"], "response": _text(g.response),
            "metric": s["metric"], "score": s["score"], "task_status": s["task_status"],
            "task_detail": json.dumps(s["detail"], default=str, ensure_ascii=False),
            "rouge_l": rouge_l(g.response, _text(e.get("reference_response")) or t_resp),
            "response_tokens": int(g.completion_tokens) if _finite(g.completion_tokens) else counter(g.response or ""),
            "length_bucket": length_bucket(counter(ref_text), cat.balance.length_buckets),
            "finish_reason": _text(g.finish_reason), "latency_s": float(g.latency_s) if _finite(g.latency_s) else None,
            "generation_error": _text(getattr(g, "error", None)),
        })
    return pd.DataFrame(rows)


def _finite(v: Any) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


# --- statistics -------------------------------------------------------------------------------------------------

def bootstrap_ci(values: Iterable[float], n_boot: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean; NaNs are dropped. The interval always contains the mean."""
    x = np.asarray([v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))], float)
    n = len(x)
    if n == 0:
        return float("nan"), float("nan")
    mean = float(x.mean())
    if n == 1 or np.all(x == x[0]):
        return mean, mean
    rng = np.random.default_rng(seed)
    # chunked so a large eval set does not allocate n_boot * n at once
    means = np.empty(n_boot)
    step = max(1, int(4_000_000 // n))
    for start in range(0, n_boot, step):
        k = min(step, n_boot - start)
        means[start:start + k] = x[rng.integers(0, n, size=(k, n))].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(min(lo, mean)), float(max(hi, mean))


def mean_with_ci(values: Iterable[float], n_boot: int = 2000, seed: int = 0) -> dict:
    x = [float(v) for v in values if _finite(v)]
    lo, hi = bootstrap_ci(x, n_boot=n_boot, seed=seed)
    return {"n": len(x), "mean": float(np.mean(x)) if x else float("nan"), "ci_low": lo, "ci_high": hi}


def stratified(results: pd.DataFrame, by: list[str], value: str = "score", n_boot: int = 1000) -> pd.DataFrame:
    """Mean and bootstrap CI of `value` per group (e.g. variant x category x difficulty)."""
    if results.empty:
        return pd.DataFrame(columns=[*by, "n", "mean", "ci_low", "ci_high"])
    rows = []
    for key, grp in results.groupby(by, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), **mean_with_ci(grp[value], n_boot=n_boot)})
    return pd.DataFrame(rows)


def stratified_breakdown(results: pd.DataFrame, n_boot: int = 1000,
                         judge_signals: dict[str, str] | None = None) -> dict[str, pd.DataFrame]:
    """The strata: category, difficulty and response-length bucket, per variant; task score and the
    win rate against the teacher side by side.

    judge_signals: variant -> that variant's overall judge signal vs the teacher. A stratum gets no win rate
    when the variant's judge has no signal overall or within the stratum (see signal.py)."""
    out = {}
    for dim in ("category", "difficulty", "length_bucket"):
        task = stratified(results, ["variant", dim], "score", n_boot).rename(
            columns={"n": "n_task", "mean": "task_score", "ci_low": "task_ci_low", "ci_high": "task_ci_high"})
        if "judge_score" in results.columns:
            judged = results[results["variant"] != TEACHER]
            rates = stratified(judged, ["variant", dim], "judge_score", n_boot).rename(
                columns={"n": "n_judged", "mean": "win_rate_vs_teacher", "ci_low": "win_ci_low", "ci_high": "win_ci_high"})
            rates["judge_signal"] = [_stratum_signal(judged, dim, r, judge_signals or {})
                                     for r in rates.to_dict("records")]
            hidden = rates["judge_signal"] != SIGNAL_OK
            rates.loc[hidden, ["win_rate_vs_teacher", "win_ci_low", "win_ci_high"]] = np.nan
            task = task.merge(rates, on=["variant", dim], how="left")
        out[dim] = task
    return out


def _stratum_signal(judged: pd.DataFrame, dim: str, rates_row: dict, overall: dict[str, str]) -> str:
    variant = rates_row["variant"]
    if not has_signal(overall.get(variant)):
        return str(overall[variant])
    g = judged[(judged["variant"] == variant) & (judged[dim] == rates_row[dim])]
    scores = g["judge_score"].astype(float)
    valid = scores.notna()
    consistency = (float(g.loc[valid, "judge_consistent"].astype(bool).mean())
                   if "judge_consistent" in g.columns and valid.any() else float("nan"))
    # a both-orders score of exactly 0.5 is a tie
    return judge_signal(int(valid.sum()), int((scores[valid] == 0.5).sum()), consistency)


def transfer_ratios(results: pd.DataFrame, categories: dict[str, Any], teacher: str = TEACHER) -> pd.DataFrame:
    """Student task score / teacher task score per variant x category and overall, on the examples where both
    have a known score. Compared with the category's eval_target_transfer and the typical band."""
    cols = ["variant", "category", "n", "student_score", "teacher_score", "transfer_ratio", "target", "complexity",
            "transfer_band", "meets_target"]
    if results.empty:
        return pd.DataFrame(columns=cols)
    t = results[results["variant"] == teacher].set_index("example_id")["score"]
    rows = []
    for variant, grp in results[results["variant"] != teacher].groupby("variant", sort=True):
        g = grp.assign(teacher_score=grp["example_id"].map(t))
        g = g[g["score"].notna() & g["teacher_score"].notna()]
        per_cat_met = []
        for cat, cg in g.groupby("category", sort=True):
            c = categories.get(cat)
            s, ts = float(cg["score"].mean()), float(cg["teacher_score"].mean())
            ratio = s / ts if ts > 0 else float("nan")
            target = float(c.eval_target_transfer) if c is not None else float("nan")
            met = bool(ratio >= target) if not math.isnan(ratio) else False
            per_cat_met.append(met)
            rows.append({"variant": variant, "category": cat, "n": len(cg), "student_score": s, "teacher_score": ts,
                         "transfer_ratio": ratio, "target": target,
                         "complexity": c.complexity if c is not None else None,
                         "transfer_band": _band_text(c.complexity if c is not None else None), "meets_target": met})
        if len(g):
            s, ts = float(g["score"].mean()), float(g["teacher_score"].mean())
            rows.append({"variant": variant, "category": OVERALL, "n": len(g), "student_score": s,
                         "teacher_score": ts, "transfer_ratio": s / ts if ts > 0 else float("nan"),
                         "target": float("nan"), "complexity": None, "transfer_band": None,
                         "meets_target": bool(per_cat_met) and all(per_cat_met)})
    return pd.DataFrame(rows, columns=cols)


def _band_text(complexity: str | None) -> str | None:
    if complexity not in TRANSFER_BANDS:
        return None
    lo, hi = TRANSFER_BANDS[complexity]
    return f">= {lo:.0%}" if hi is None else f"{lo:.0%}-{hi:.0%}"


def percentile(values: Iterable[float], q: float) -> float:
    x = [float(v) for v in values if _finite(v)]
    return float(np.percentile(x, q)) if x else float("nan")
