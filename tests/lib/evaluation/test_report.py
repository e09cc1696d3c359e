"""Iteration advice bands, failure categories, trend."""

import math

import pandas as pd

from distill_assets.lib.evaluation import report as rp


def test_iteration_advice_bands():
    assert rp.iteration_advice(0.5)["band"].startswith("< 70%")
    assert "More training data (2-5x the current amount)" in rp.iteration_advice(0.69)["advice"]
    assert rp.iteration_advice(0.70)["band"].startswith("70-85%")
    assert rp.iteration_advice(0.9)["band"].startswith("85-95%")
    assert rp.iteration_advice(0.96)["band"].startswith("> 95%")
    assert rp.iteration_advice(1.0)["band"].startswith("> 95%")
    assert rp.iteration_advice(float("nan"))["band"] == "no valid judge verdicts"


def test_failure_categories():
    c = lambda **kw: rp.classify_failure({"metric": "exact_match", "response_tokens": 50, **kw}, 60, 0.25)
    assert c(task_status="pass", judge_verdict="win") is None
    assert c(task_status="pass", judge_verdict="tie") is None
    assert c(task_status="pass", judge_verdict="loss") == "judge_loss"
    assert c(task_status="fail", judge_verdict="win") == "wrong_answer"
    assert c(task_status="fail", metric="pass@1") == "code_fails_tests"
    assert c(task_status="unparsed") == "format"
    assert c(task_status="fail", finish_reason="length") == "truncated"
    assert c(task_status="fail", response_tokens=5) == "too_short"
    assert c(task_status="no_response") == "no_response"
    assert c(task_status="infra_error", judge_verdict="unparseable") is None


def test_trend_puts_the_current_version_last_with_deltas():
    h = pd.DataFrame([
        {"adapter_version": "v1", "variant": "merged_student", "category": "__all__", "task_score": 0.5,
         "transfer_ratio": 0.6, "win_rate_vs_teacher": 0.3, "win_rate_vs_base": 0.6, "created_at": pd.Timestamp("2026-01-01")},
        {"adapter_version": "v2", "variant": "merged_student", "category": "__all__", "task_score": 0.7,
         "transfer_ratio": 0.8, "win_rate_vs_teacher": 0.4, "win_rate_vs_base": 0.7, "created_at": pd.Timestamp("2026-01-02")},
    ])
    t = rp.trend_table(h, "v1")
    assert list(t["adapter_version"]) == ["v2", "v1"]
    assert t.iloc[1]["delta_task_score"] == -0.2 or math.isclose(t.iloc[1]["delta_task_score"], -0.2)
