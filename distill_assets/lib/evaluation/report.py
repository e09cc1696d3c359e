"""Per-example results, failure analysis, trend, the headline and the markdown summary.

Pure functions: DataFrames in, DataFrames (or text) out. The summary rows come from summary.py; the HTML
report (report_html.py) is rendered from exactly the rows that go to `eval_results` and `eval_summary`, so
the report and the tables cannot disagree. Both lead with the paired change vs the base student (change.py).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from distill_assets.lib.evaluation import change as ch
from distill_assets.lib.evaluation import pairwise as pw
from distill_assets.lib.evaluation.metrics import BASE, FAIL, MERGED, NO_RESPONSE, OVERALL, TEACHER, UNPARSED
from distill_assets.lib.evaluation.signal import describe, has_signal, no_signal

# Iteration strategy by win rate against the teacher.
ITERATION_ADVICE = [
    (0.0, 0.70, "< 70%: significant gap",
     ["More training data (2-5x the current amount)", "Higher quality data (stricter filtering)",
      "Larger student model", "Higher LoRA rank", "Chain-of-thought distillation (if not already used)"]),
    (0.70, 0.85, "70-85%: reasonable but improvable",
     ["Analyze failure cases and generate targeted data", "Include harder examples (Evol-Instruct)",
      "Slightly longer training", "Hyperparameter tuning"]),
    (0.85, 0.95, "85-95%: good result; for most tasks this is success",
     ["Is this good enough for your use case?", "Focus on deployment optimization",
      "Minor targeted improvements for specific failure modes"]),
    (0.95, math.inf, "> 95%: excellent",
     ["Your task is well-suited for distillation", "You might be able to use an even smaller student",
      "Check that evaluation isn't overfitting to the training distribution"]),
]

FAILURE_CATEGORIES = ["no_response", "truncated", "too_short", "format", "wrong_answer", "code_fails_tests",
                      "judge_loss"]

RESULT_COLUMNS = [
    "example_id", "variant", "category", "difficulty", "source", "length_bucket", "prompt", "response", "metric",
    "score", "task_status", "task_detail", "rouge_l", "response_tokens", "finish_reason", "latency_s",
    "generation_error", "judge_verdict", "judge_score", "judge_consistent", "judge_rationale",
    "judge_vs_base_verdict", "judge_vs_base_score", "judge_vs_base_consistent", "failure_category",
    "adapter_version", "run_id", "created_at",
]


def iteration_advice(win_rate: float | None, judge_signal: str | None = None) -> dict:
    if no_signal(judge_signal):
        return {"band": describe(judge_signal),
                "advice": ["Read the per-category change vs the base student: the task metric does not depend "
                           "on the judge", "Use a larger judge model (JUDGE_MODEL) and rerun eval_report"]}
    if win_rate is None or (isinstance(win_rate, float) and math.isnan(win_rate)):
        return {"band": "no valid judge verdicts", "advice": ["Fix the judge (see parse failures) and rerun"]}
    for lo, hi, band, advice in ITERATION_ADVICE:
        if lo <= win_rate < hi or (hi == math.inf and win_rate >= lo):
            return {"band": band, "advice": advice}
    return {"band": ITERATION_ADVICE[-1][2], "advice": ITERATION_ADVICE[-1][3]}


# --- results --------------------------------------------------------------------------------------------------

def classify_failure(row: dict, teacher_tokens: float | None, too_short_ratio: float) -> str | None:
    """The failure category of one student row, or None when it neither failed its task nor lost."""
    status, verdict = row.get("task_status"), row.get("judge_verdict")
    failed = status in (FAIL, UNPARSED, NO_RESPONSE)
    lost = verdict == pw.LOSS
    if not failed and not lost:
        return None
    if status == NO_RESPONSE:
        return "no_response"
    if row.get("finish_reason") == "length":
        return "truncated"
    n = row.get("response_tokens") or 0
    if teacher_tokens and n < too_short_ratio * teacher_tokens:
        return "too_short"
    if status == UNPARSED:
        return "format"
    if status == FAIL:
        return "code_fails_tests" if row.get("metric") == "pass@1" else "wrong_answer"
    return "judge_loss"


def attach_judgments(scored: pd.DataFrame, judged: pd.DataFrame, *, adapter_version: str, run_id: str,
                     too_short_ratio: float = 0.25, created_at: datetime | None = None) -> pd.DataFrame:
    """eval_results rows: scored generations + the judge verdict vs the teacher (and vs the base for the
    merged student) + the failure category."""
    out = scored.copy()
    for col in ("judge_verdict", "judge_rationale", "judge_vs_base_verdict"):
        out[col] = None
    for col in ("judge_score", "judge_vs_base_score"):
        out[col] = np.nan
    out["judge_consistent"] = None
    out["judge_vs_base_consistent"] = None
    if not judged.empty:
        for comp, prefix in (("vs_teacher", "judge"), ("vs_base", "judge_vs_base")):
            j = judged[judged["comparison"] == comp]
            if j.empty:
                continue
            j = j.assign(_rat=[pw.rationale(r) for r in j.to_dict("records")])
            key = dict(zip(zip(j["candidate"], j["example_id"]), j.to_dict("records")))
            idx = list(zip(out["variant"], out["example_id"]))
            out[f"{prefix}_verdict"] = [key[k]["judge_verdict"] if k in key else out.loc[i, f"{prefix}_verdict"]
                                        for i, k in zip(out.index, idx)]
            out[f"{prefix}_score"] = [key[k]["judge_score"] if k in key else np.nan for k in idx]
            out[f"{prefix}_consistent"] = [key[k]["consistent"] if k in key else None for k in idx]
            if prefix == "judge":
                out["judge_rationale"] = [key[k]["_rat"] if k in key else None for k in idx]
    t_tokens = out[out["variant"] == TEACHER].set_index("example_id")["response_tokens"].to_dict()
    # a loss from a judge without signal is no failure of the student
    vs_teacher = judged[judged["comparison"] == "vs_teacher"] if not judged.empty else judged
    rates = pw.win_rates(vs_teacher, ["candidate"], n_boot=100) if not vs_teacher.empty else pd.DataFrame()
    silent = {r["candidate"] for r in rates.to_dict("records") if no_signal(r["judge_signal"])}
    out["failure_category"] = [
        None if r["variant"] in (TEACHER, BASE) else classify_failure(
            {**r, "judge_verdict": None} if r["variant"] in silent else r, t_tokens.get(r["example_id"]),
            too_short_ratio)
        for r in out.to_dict("records")]
    out["adapter_version"] = adapter_version
    out["run_id"] = run_id
    out["created_at"] = created_at or datetime.now(UTC)
    for c in RESULT_COLUMNS:
        if c not in out.columns:
            out[c] = None
    return out[RESULT_COLUMNS]


def failure_analysis(results: pd.DataFrame) -> pd.DataFrame:
    """Every student loss and failed example, with the prompt, both responses and the judge's rationale."""
    t = results[results["variant"] == TEACHER].set_index("example_id")["response"]
    f = results[results["failure_category"].notna()].copy()
    if f.empty:
        return pd.DataFrame(columns=["variant", "category", "failure_category", "example_id", "difficulty", "prompt",
                                     "response", "teacher_response", "task_status", "task_detail", "judge_verdict",
                                     "judge_rationale"])
    f["teacher_response"] = f["example_id"].map(t)
    order = {c: i for i, c in enumerate(FAILURE_CATEGORIES)}
    f["_o"] = f["failure_category"].map(order)
    return f.sort_values(["variant", "_o", "category", "example_id"])[
        ["variant", "category", "failure_category", "example_id", "difficulty", "prompt", "response",
         "teacher_response", "task_status", "task_detail", "judge_verdict", "judge_rationale"]].reset_index(drop=True)


def trend_table(history: pd.DataFrame, adapter_version: str, variant: str = MERGED) -> pd.DataFrame:
    """The overall numbers of `variant` for every adapter version evaluated so far (oldest first), with the
    change against the previous version."""
    cols = ["adapter_version", "evaluated_at", "task_score", "transfer_ratio", "win_rate_vs_teacher",
            "win_rate_vs_base"]
    if history is None or history.empty:
        return pd.DataFrame(columns=cols)
    h = history[(history["variant"] == variant) & (history["category"] == OVERALL)].copy()
    if h.empty:
        return pd.DataFrame(columns=cols)
    h = (h.sort_values("created_at").groupby("adapter_version", as_index=False).last()
         .sort_values("created_at").rename(columns={"created_at": "evaluated_at"}))
    # the current version always last, even when an older version was re-evaluated later
    h = pd.concat([h[h["adapter_version"] != adapter_version], h[h["adapter_version"] == adapter_version]])
    h = h[cols].reset_index(drop=True)
    for c in cols[2:]:
        h[f"delta_{c}"] = pd.to_numeric(h[c], errors="coerce").diff()
    return h


# --- headline and markdown -------------------------------------------------------------------------------

def fmt(v: Any, pct: bool = False, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return "—"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{100 * v:.1f}%" if pct else f"{v:.{digits}f}"
    return str(v)


def headline(summary: pd.DataFrame, variant: str = MERGED) -> dict:
    row = summary[(summary["variant"] == variant) & (summary["category"] == OVERALL)]
    if row.empty:
        return {}
    r = row.iloc[0]
    keys = ["task_score", "transfer_ratio", "meets_target", "win_rate_vs_teacher", "win_ci_low", "win_ci_high",
            "win_rate_vs_base", "base_win_ci_low", "base_win_ci_high", "consistency_rate", "base_consistency_rate",
            "judge_signal", "base_judge_signal", "unparseable", "judge_errors", "n", "delta_vs_base",
            "delta_ci_low", "delta_ci_high", "change"]
    out = {k: (None if k not in r.index or pd.isna(r[k]) else (r[k].item() if hasattr(r[k], "item") else r[k]))
           for k in keys}
    out["improved_categories"] = ch.categories_with(summary, ch.IMPROVED, variant)
    out["regressed_categories"] = ch.categories_with(summary, ch.REGRESSED, variant)
    return out


def win_rate_text(head: dict, vs: str = "teacher") -> str:
    """'57.0% (95% CI 40.0%–70.0%)', or the reason there is no win rate: a judge without signal shows none."""
    p = "" if vs == "teacher" else "base_"
    signal = head.get(f"{p}judge_signal")
    rate = head.get(f"win_rate_vs_{vs}")
    if not has_signal(signal):
        return describe(signal)
    return f"{fmt(rate, True)} (95% CI {fmt(head.get(f'{p}win_ci_low'), True)}–{fmt(head.get(f'{p}win_ci_high'), True)})"


def markdown_summary(summary: pd.DataFrame, efficiency: pd.DataFrame, trend: pd.DataFrame, failures: pd.DataFrame,
                     adapter_version: str, report_path: str | None = None) -> str:
    head = headline(summary)
    advice = iteration_advice(head.get("win_rate_vs_teacher"), head.get("judge_signal"))
    lines = [f"**adapter** `{adapter_version}`", "", f"**{ch.change_sentence(summary)}**", "",
             ch.change_markdown(summary), ""]
    exports = ch.export_variants(summary)
    if exports:
        lines += ["exported variants vs base:", "", ch.change_markdown(summary, exports), ""]
    lines += [f"- win rate vs teacher: **{win_rate_text(head, 'teacher')}**, "
              f"consistency {fmt(head.get('consistency_rate'), True)}, unparseable {fmt(head.get('unparseable'))}",
              f"- win rate vs base: **{win_rate_text(head, 'base')}**, "
              f"consistency {fmt(head.get('base_consistency_rate'), True)}",
              f"- transfer ratio: **{fmt(head.get('transfer_ratio'), True)}**, all targets met: "
              f"{fmt(head.get('meets_target'))}",
              f"- advice ({advice['band']}): " + "; ".join(advice["advice"]), ""]
    ok = summary[(summary["category"] == OVERALL)]
    cols = ["variant", "status", "task_score", "transfer_ratio", "win_rate_vs_teacher", "latency_p50_s",
            "tokens_per_s", "usd_per_1m_tokens"]
    t = ok[cols].copy()
    for c in cols[2:]:
        t[c] = [fmt(v, pct=c in ("transfer_ratio", "win_rate_vs_teacher")) for v in t[c]]
    lines.append(t.to_markdown(index=False))
    if len(trend) > 1:
        prev, cur = trend.iloc[-2], trend.iloc[-1]
        lines.append(f"\nvs previous `{prev['adapter_version']}`: task score "
                     f"{fmt(prev['task_score'])} → {fmt(cur['task_score'])}, transfer "
                     f"{fmt(prev['transfer_ratio'], True)} → {fmt(cur['transfer_ratio'], True)}")
    if not failures.empty:
        counts = failures.groupby("failure_category").size().sort_values(ascending=False)
        lines.append("\nfailures: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if report_path:
        lines.append(f"\nreport: `{report_path}`")
    return "\n".join(lines)


def write_report(html_text: str, reports_dir: Path, adapter_version: str, run_id: str) -> Path:
    reports_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in adapter_version)[:64]
    path = reports_dir / f"eval_{safe}_{stamp}_{run_id[:8]}.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(html_text, encoding="utf-8")
    tmp.replace(path)  # never a half-written report
    (reports_dir / "eval_latest.html").write_text(html_text, encoding="utf-8")
    return path


__all__ = ["iteration_advice", "classify_failure", "attach_judgments", "failure_analysis", "trend_table", "fmt",
           "headline", "win_rate_text", "markdown_summary", "write_report"]
