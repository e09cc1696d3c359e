"""Per-example results, the summary table, failure analysis, trend, and the HTML / markdown report.

Pure functions: DataFrames in, DataFrames (or text) out. The HTML report embeds its plots as base64 PNG and its
summary numbers as JSON (`<script id="eval-summary">`), both computed from exactly the rows that go to
`eval_results`, so the report and the table cannot disagree.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from distill_assets.evaluation import pairwise as pw
from distill_assets.evaluation.metrics import (BASE, FAIL, MERGED, NO_RESPONSE, OVERALL, TEACHER, UNPARSED,
                                               mean_with_ci, percentile, stratified_breakdown, transfer_ratios)

# The guide's iteration strategy by win rate against the teacher.
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


def iteration_advice(win_rate: float | None) -> dict:
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
    out["failure_category"] = [
        None if r["variant"] in (TEACHER, BASE) else classify_failure(r, t_tokens.get(r["example_id"]), too_short_ratio)
        for r in out.to_dict("records")]
    out["adapter_version"] = adapter_version
    out["run_id"] = run_id
    out["created_at"] = created_at or datetime.now(timezone.utc)
    for c in RESULT_COLUMNS:
        if c not in out.columns:
            out[c] = None
    return out[RESULT_COLUMNS]


def _judged_frame(results: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """The judge columns of eval_results in the shape pairwise.win_rates expects."""
    r = results[results[f"{prefix}_verdict"].notna()]
    return pd.DataFrame({"variant": r["variant"], "category": r["category"],
                         "judge_verdict": r[f"{prefix}_verdict"], "judge_score": r[f"{prefix}_score"].astype(float),
                         "consistent": r[f"{prefix}_consistent"]})


def summary_table(results: pd.DataFrame, efficiency: pd.DataFrame, categories: dict[str, Any], *,
                  adapter_version: str, run_id: str, n_boot: int = 2000,
                  created_at: datetime | None = None) -> pd.DataFrame:
    """eval_summary: one row per variant x category (and '__all__'); skipped variants get one '__all__' row."""
    created_at = created_at or datetime.now(timezone.utc)
    transfer = transfer_ratios(results, categories)
    tkey = {(r.variant, r.category): r for r in transfer.itertuples(index=False)}
    jt = pw.win_rates(_judged_frame(results, "judge"), ["variant", "category"], n_boot=n_boot)
    jt_all = pw.win_rates(_judged_frame(results, "judge"), ["variant"], n_boot=n_boot).assign(category=OVERALL)
    jb = pw.win_rates(_judged_frame(results, "judge_vs_base"), ["variant", "category"], n_boot=n_boot)
    jb_all = pw.win_rates(_judged_frame(results, "judge_vs_base"), ["variant"], n_boot=n_boot).assign(category=OVERALL)
    jkey = {(r["variant"], r["category"]): r for r in pd.concat([jt, jt_all]).to_dict("records")}
    bkey = {(r["variant"], r["category"]): r for r in pd.concat([jb, jb_all]).to_dict("records")}
    ekey = {r["variant"]: r for r in efficiency.to_dict("records")} if not efficiency.empty else {}
    rows = []
    for variant, vg in results.groupby("variant", sort=False):
        groups = [(c, g) for c, g in vg.groupby("category", sort=True)] + [(OVERALL, vg)]
        for cat, g in groups:
            task = mean_with_ci(g["score"], n_boot=n_boot)
            tr = tkey.get((variant, cat))
            j, b, e = jkey.get((variant, cat), {}), bkey.get((variant, cat), {}), ekey.get(variant, {})
            lat = g["latency_s"].astype(float)
            tok_s = (float(g["response_tokens"].sum()) / float(lat.sum())) if lat.notna().any() and lat.sum() > 0 \
                else np.nan
            metrics = sorted(g["metric"].dropna().unique())
            rows.append({
                "adapter_version": adapter_version, "variant": variant, "category": cat,
                "metric": metrics[0] if len(metrics) == 1 else "mixed", "status": e.get("status", "ok"),
                "reason": e.get("reason"), "n": int(len(g)), "n_scored": task["n"],
                "task_score": task["mean"], "task_ci_low": task["ci_low"], "task_ci_high": task["ci_high"],
                "infra_errors": int((g["task_status"] == "infra_error").sum()),
                "teacher_score": getattr(tr, "teacher_score", np.nan) if tr is not None else np.nan,
                "transfer_ratio": getattr(tr, "transfer_ratio", np.nan) if tr is not None else np.nan,
                "transfer_target": getattr(tr, "target", np.nan) if tr is not None else np.nan,
                "meets_target": bool(tr.meets_target) if tr is not None else None,
                "win_rate_vs_teacher": j.get("win_rate", np.nan), "win_ci_low": j.get("win_ci_low", np.nan),
                "win_ci_high": j.get("win_ci_high", np.nan), "n_judged": j.get("n_valid", 0),
                "wins": j.get("wins", 0), "ties": j.get("ties", 0), "losses": j.get("losses", 0),
                "consistency_rate": j.get("consistency_rate", np.nan), "unparseable": j.get("unparseable", 0),
                "judge_errors": j.get("judge_errors", 0),
                "win_rate_vs_base": b.get("win_rate", np.nan), "base_win_ci_low": b.get("win_ci_low", np.nan),
                "base_win_ci_high": b.get("win_ci_high", np.nan),
                "base_consistency_rate": b.get("consistency_rate", np.nan),
                "base_unparseable": b.get("unparseable", 0),
                "latency_p50_s": percentile(lat, 50), "latency_p95_s": percentile(lat, 95), "tokens_per_s": tok_s,
                "peak_mem_mb": e.get("peak_mem_mb", np.nan), "size_bytes": e.get("size_bytes"),
                "usd_per_1m_tokens": e.get("usd_per_1m_tokens", np.nan),
                "cost_vs_teacher": e.get("cost_vs_teacher", np.nan),
                "run_id": run_id, "created_at": created_at,
            })
    present = set(results["variant"]) if not results.empty else set()
    for e in (efficiency.to_dict("records") if not efficiency.empty else []):
        if e["variant"] not in present:
            rows.append({"adapter_version": adapter_version, "variant": e["variant"], "category": OVERALL,
                         "metric": None, "status": e["status"], "reason": e["reason"], "n": 0, "n_scored": 0,
                         "run_id": run_id, "created_at": created_at})
    out = pd.DataFrame(rows)
    for c in SUMMARY_COLUMNS:
        if c not in out.columns:
            out[c] = None
    out = out[SUMMARY_COLUMNS]
    for c in ("size_bytes", "n_judged", "wins", "ties", "losses", "unparseable", "judge_errors",
              "base_unparseable", "infra_errors"):
        out[c] = pd.to_numeric(out[c], errors="coerce").astype("Int64")
    return out


SUMMARY_COLUMNS = [
    "adapter_version", "variant", "category", "metric", "status", "reason", "n", "n_scored", "task_score",
    "task_ci_low", "task_ci_high", "infra_errors", "teacher_score", "transfer_ratio", "transfer_target",
    "meets_target", "win_rate_vs_teacher", "win_ci_low", "win_ci_high", "n_judged", "wins", "ties", "losses",
    "consistency_rate", "unparseable", "judge_errors", "win_rate_vs_base", "base_win_ci_low", "base_win_ci_high",
    "base_consistency_rate", "base_unparseable", "latency_p50_s", "latency_p95_s", "tokens_per_s", "peak_mem_mb",
    "size_bytes", "usd_per_1m_tokens", "cost_vs_teacher", "run_id", "created_at",
]


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


# --- rendering ------------------------------------------------------------------------------------------------

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


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plots(summary: pd.DataFrame, strata: dict[str, pd.DataFrame], efficiency: pd.DataFrame,
           trend: pd.DataFrame) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = {}
    ok = summary[summary["status"].fillna("ok") == "ok"]
    allrows = ok[ok["category"] == OVERALL]
    # win rates with CIs
    w = allrows[allrows["win_rate_vs_teacher"].notna()]
    if not w.empty:
        fig, ax = plt.subplots(figsize=(7, 3))
        y = w["win_rate_vs_teacher"].astype(float).to_numpy()
        err = np.vstack([y - w["win_ci_low"].astype(float).to_numpy(), w["win_ci_high"].astype(float).to_numpy() - y])
        ax.bar(w["variant"], y, yerr=err, capsize=4, color="#4c78a8")
        ax.axhline(0.5, color="gray", ls="--", lw=1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("win rate vs teacher")
        ax.set_title("Position-debiased win rate vs teacher (95% bootstrap CI)")
        out["win_rate"] = _png(fig)
    # transfer per category
    t = ok[(ok["category"] != OVERALL) & ok["transfer_ratio"].notna()]
    if not t.empty:
        cats = sorted(t["category"].unique())
        variants = list(dict.fromkeys(t["variant"]))
        fig, ax = plt.subplots(figsize=(8, 3.2))
        width = 0.8 / max(1, len(variants))
        for i, v in enumerate(variants):
            tv = t[t["variant"] == v].set_index("category")
            ax.bar(np.arange(len(cats)) + i * width, [tv["transfer_ratio"].get(c, np.nan) for c in cats], width,
                   label=v)
        targets = t.drop_duplicates("category").set_index("category")["transfer_target"]
        for j, c in enumerate(cats):
            ax.hlines(targets.get(c, np.nan), j - 0.1, j + 0.8, colors="red", linestyles="--", lw=1)
        ax.set_xticks(np.arange(len(cats)) + 0.4 - width / 2, cats)
        ax.set_ylabel("student / teacher")
        ax.set_title("Transfer ratio by category (red: target)")
        ax.legend(fontsize=7)
        out["transfer"] = _png(fig)
    # strata
    for dim in ("difficulty", "length_bucket"):
        s = strata.get(dim)
        if s is None or s.empty:
            continue
        fig, ax = plt.subplots(figsize=(7, 3))
        piv = s.pivot_table(index=dim, columns="variant", values="task_score", aggfunc="first")
        piv.plot.bar(ax=ax, rot=0)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("task score")
        ax.set_title(f"Task score by {dim.replace('_', ' ')}")
        ax.legend(fontsize=7)
        out[f"strata_{dim}"] = _png(fig)
    # efficiency
    e = efficiency[efficiency["status"] == "ok"] if not efficiency.empty else efficiency
    if not e.empty:
        fig, axes = plt.subplots(1, 3, figsize=(11, 3))
        axes[0].bar(e["variant"], e["latency_p50_s"].astype(float), label="p50")
        axes[0].bar(e["variant"], (e["latency_p95_s"] - e["latency_p50_s"]).astype(float),
                    bottom=e["latency_p50_s"].astype(float), alpha=0.5, label="p95")
        axes[0].set_title("latency (s)")
        axes[0].legend(fontsize=7)
        axes[1].bar(e["variant"], e["tokens_per_s"].astype(float), color="#59a14f")
        axes[1].set_title("generated tokens/s")
        axes[2].bar(e["variant"], e["usd_per_1m_tokens"].astype(float), color="#e15759")
        axes[2].set_title("$ per 1M tokens")
        for ax in axes:
            ax.tick_params(axis="x", rotation=45, labelsize=7)
        out["efficiency"] = _png(fig)
    if trend is not None and len(trend) > 1:
        fig, ax = plt.subplots(figsize=(7, 3))
        for c in ("task_score", "transfer_ratio", "win_rate_vs_teacher", "win_rate_vs_base"):
            ax.plot(range(len(trend)), pd.to_numeric(trend[c], errors="coerce"), marker="o", label=c)
        ax.set_xticks(range(len(trend)), [str(v)[:10] for v in trend["adapter_version"]], rotation=30, fontsize=7)
        ax.set_title("Trend across adapter versions (merged student)")
        ax.legend(fontsize=7)
        out["trend"] = _png(fig)
    return out


_INT_COLS = {"n", "n_task", "n_judged", "n_scored", "n_pairs", "n_valid", "wins", "ties", "losses", "requests",
             "errors", "unparseable", "judge_errors", "base_unparseable", "infra_errors", "count"}


def _table(df: pd.DataFrame, pct_cols: tuple = (), max_rows: int | None = None) -> str:
    if df is None or df.empty:
        return "<p><em>(none)</em></p>"
    d = df if max_rows is None else df.head(max_rows)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in d.columns)
    body = []
    for r in d.itertuples(index=False):
        cells = []
        for c, v in zip(d.columns, r):
            if c in _INT_COLS and isinstance(v, (float, np.floating)) and not math.isnan(v):
                v = int(v)
            cells.append(f"<td>{html.escape(fmt(v, pct=c in pct_cols))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def headline(summary: pd.DataFrame, variant: str = MERGED) -> dict:
    row = summary[(summary["variant"] == variant) & (summary["category"] == OVERALL)]
    if row.empty:
        return {}
    r = row.iloc[0]
    keys = ["task_score", "transfer_ratio", "meets_target", "win_rate_vs_teacher", "win_ci_low", "win_ci_high",
            "win_rate_vs_base", "base_win_ci_low", "base_win_ci_high", "consistency_rate", "unparseable",
            "judge_errors", "n"]
    return {k: (None if pd.isna(r[k]) else (r[k].item() if hasattr(r[k], "item") else r[k])) for k in keys}


def _json_safe(df: pd.DataFrame) -> list[dict]:
    out = []
    for rec in df.to_dict("records"):
        clean = {}
        for k, v in rec.items():
            if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
                clean[k] = None
            elif isinstance(v, (np.integer,)):
                clean[k] = int(v)
            elif isinstance(v, (np.floating,)):
                clean[k] = None if math.isnan(v) else float(v)
            elif isinstance(v, (np.bool_,)):
                clean[k] = bool(v)
            elif isinstance(v, (pd.Timestamp, datetime)):
                clean[k] = v.isoformat()
            else:
                clean[k] = v
        out.append(clean)
    return out


CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;
vertical-align:top}th{background:#f3f3f3}.fail{border:1px solid #e0b4b4;background:#fff6f6;padding:.6em;margin:.6em 0}
pre{white-space:pre-wrap;background:#f8f8f8;padding:.4em;margin:.2em 0;max-height:18em;overflow:auto}
.key{font-size:1.1em}.skip{color:#a60}"""


def render_html(*, results: pd.DataFrame, summary: pd.DataFrame, efficiency: pd.DataFrame, strata: dict,
                failures: pd.DataFrame, trend: pd.DataFrame, adapter_version: str, run_id: str,
                teacher_price: dict, config: dict | None = None) -> str:
    plots = _plots(summary, strata, efficiency, trend)
    head = headline(summary)
    advice = iteration_advice(head.get("win_rate_vs_teacher"))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>distill eval {html.escape(adapter_version)}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>Distillation evaluation</h1><p>adapter version <code>{html.escape(adapter_version)}</code> · "
             f"run <code>{html.escape(run_id)}</code> · {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} · "
             f"{results['example_id'].nunique() if not results.empty else 0} eval examples</p>"]
    parts.append("<h2>Key numbers (merged student)</h2><ul class='key'>")
    parts.append(f"<li>win rate vs teacher: <b id='win-vs-teacher'>{fmt(head.get('win_rate_vs_teacher'), True)}</b> "
                 f"(95% CI {fmt(head.get('win_ci_low'), True)}–{fmt(head.get('win_ci_high'), True)}); "
                 f"position consistency {fmt(head.get('consistency_rate'), True)}; "
                 f"unparseable verdicts {fmt(head.get('unparseable'))}, judge errors {fmt(head.get('judge_errors'))}</li>")
    parts.append(f"<li>win rate vs base: <b id='win-vs-base'>{fmt(head.get('win_rate_vs_base'), True)}</b> "
                 f"(95% CI {fmt(head.get('base_win_ci_low'), True)}–{fmt(head.get('base_win_ci_high'), True)})</li>")
    parts.append(f"<li>task score <b>{fmt(head.get('task_score'))}</b>; overall transfer ratio "
                 f"<b id='transfer'>{fmt(head.get('transfer_ratio'), True)}</b>; all category targets met: "
                 f"{fmt(head.get('meets_target'))}</li></ul>")
    parts.append(f"<h3>Iteration advice: {html.escape(advice['band'])}</h3><ol>"
                 + "".join(f"<li>{html.escape(a)}</li>" for a in advice["advice"]) + "</ol>")
    skipped = summary[summary["status"].fillna("ok") != "ok"]
    if not skipped.empty:
        parts.append("<h3>Variants not evaluated</h3><ul>" + "".join(
            f"<li class='skip'><b>{html.escape(str(r.variant))}</b>: {html.escape(str(r.reason))}</li>"
            for r in skipped.itertuples()) + "</ul>")
    show = ["variant", "category", "metric", "n", "task_score", "task_ci_low", "task_ci_high", "teacher_score",
            "transfer_ratio", "transfer_target", "meets_target", "win_rate_vs_teacher", "win_ci_low", "win_ci_high",
            "consistency_rate", "unparseable", "judge_errors", "win_rate_vs_base"]
    ok = summary[summary["status"].fillna("ok") == "ok"]
    parts.append("<h2>Summary by variant and category</h2>" + _table(ok[show]))
    if "win_rate" in plots:
        parts.append(f"<img src='{plots['win_rate']}'>")
    parts.append("<h2>Transfer ratio</h2><p>student score / teacher score on the examples both answered. "
                 "The guide's targets: simple ≥ 95%, moderate 85–95%, complex 75–90%; the gate uses each "
                 "category's <code>eval_target_transfer</code>.</p>")
    parts.append(_table(ok[ok["transfer_ratio"].notna()][["variant", "category", "task_score", "teacher_score",
                                                            "transfer_ratio", "transfer_target", "meets_target"]]))
    if "transfer" in plots:
        parts.append(f"<img src='{plots['transfer']}'>")
    parts.append("<h2>Stratified breakdown</h2>")
    for dim, s in strata.items():
        parts.append(f"<h3>by {html.escape(dim.replace('_', ' '))}</h3>" + _table(s))
        if f"strata_{dim}" in plots:
            parts.append(f"<img src='{plots[f'strata_{dim}']}'>")
    parts.append(f"<h2>Efficiency</h2><p>teacher price: {fmt(teacher_price.get('usd_per_1m_tokens'), digits=4)} "
                 f"$/1M tokens ({html.escape(str(teacher_price.get('source')))}); local variants: "
                 f"{fmt((config or {}).get('hardware_usd_per_hour'), digits=3)} $/hour of hardware ÷ measured "
                 "generated tokens/s.</p>")
    eff_view = efficiency.copy()
    if "size_bytes" in eff_view.columns:
        eff_view.insert(eff_view.columns.get_loc("size_bytes"), "size_mb",
                        pd.to_numeric(eff_view["size_bytes"], errors="coerce") / 1e6)
        eff_view = eff_view.drop(columns="size_bytes")
    parts.append(_table(eff_view))
    if "efficiency" in plots:
        parts.append(f"<img src='{plots['efficiency']}'>")
    parts.append("<h2>Trend vs previous adapter versions</h2>" + _table(trend))
    if "trend" in plots:
        parts.append(f"<img src='{plots['trend']}'>")
    parts.append("<h2>Failure analysis</h2>")
    if failures.empty:
        parts.append("<p>No losses and no failed examples.</p>")
    else:
        counts = failures.groupby(["variant", "failure_category"]).size().rename("count").reset_index()
        parts.append(_table(counts))
        for (variant, fcat), grp in failures.groupby(["variant", "failure_category"], sort=False):
            parts.append(f"<h3>{html.escape(variant)} · {html.escape(fcat)} ({len(grp)})</h3>")
            for r in grp.itertuples(index=False):
                parts.append(
                    f"<div class='fail'><b>{html.escape(r.category)}</b> · {html.escape(str(r.example_id))} · "
                    f"{html.escape(str(r.difficulty))} · task {html.escape(str(r.task_status))} · judge "
                    f"{html.escape(str(r.judge_verdict))}<br>prompt<pre>{html.escape(str(r.prompt))}</pre>"
                    f"student<pre>{html.escape(str(r.response))}</pre>"
                    f"teacher<pre>{html.escape(str(r.teacher_response))}</pre>"
                    f"task detail<pre>{html.escape(str(r.task_detail))}</pre>"
                    f"judge rationale<pre>{html.escape(str(r.judge_rationale or '(not judged)'))}</pre></div>")
    unp = results[results["judge_verdict"].isin([pw.UNPARSEABLE, pw.JUDGE_ERROR])]
    parts.append(f"<h2>Judge parse failures and errors ({len(unp)})</h2>")
    if not unp.empty:
        parts.append(_table(unp[["variant", "category", "example_id", "judge_verdict", "judge_rationale"]]))
    payload = {"adapter_version": adapter_version, "run_id": run_id, "summary": _json_safe(summary),
               "efficiency": _json_safe(efficiency), "headline": head, "advice": advice}
    parts.append("<script type='application/json' id='eval-summary'>"
                 + json.dumps(payload, default=str).replace("</", "<\\/") + "</script></body></html>")
    return "".join(parts)


def markdown_summary(summary: pd.DataFrame, efficiency: pd.DataFrame, trend: pd.DataFrame, failures: pd.DataFrame,
                     adapter_version: str, report_path: str | None = None) -> str:
    head = headline(summary)
    advice = iteration_advice(head.get("win_rate_vs_teacher"))
    lines = [f"**adapter** `{adapter_version}`",
             f"- win rate vs teacher: **{fmt(head.get('win_rate_vs_teacher'), True)}** "
             f"(CI {fmt(head.get('win_ci_low'), True)}–{fmt(head.get('win_ci_high'), True)}), "
             f"consistency {fmt(head.get('consistency_rate'), True)}, unparseable {fmt(head.get('unparseable'))}",
             f"- win rate vs base: **{fmt(head.get('win_rate_vs_base'), True)}** "
             f"(CI {fmt(head.get('base_win_ci_low'), True)}–{fmt(head.get('base_win_ci_high'), True)})",
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
        lines.append(f"\nvs previous `{prev['adapter_version']}`: win rate vs teacher "
                     f"{fmt(prev['win_rate_vs_teacher'], True)} → {fmt(cur['win_rate_vs_teacher'], True)}, transfer "
                     f"{fmt(prev['transfer_ratio'], True)} → {fmt(cur['transfer_ratio'], True)}")
    if not failures.empty:
        counts = failures.groupby("failure_category").size().sort_values(ascending=False)
        lines.append("\nfailures: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if report_path:
        lines.append(f"\nreport: `{report_path}`")
    return "\n".join(lines)


def write_report(html_text: str, reports_dir: Path, adapter_version: str, run_id: str) -> Path:
    reports_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in adapter_version)[:64]
    path = reports_dir / f"eval_{safe}_{stamp}_{run_id[:8]}.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(html_text, encoding="utf-8")
    tmp.replace(path)  # never a half-written report
    (reports_dir / "eval_latest.html").write_text(html_text, encoding="utf-8")
    return path


__all__ = ["iteration_advice", "classify_failure", "attach_judgments", "summary_table", "failure_analysis",
           "trend_table", "render_html", "markdown_summary", "write_report", "stratified_breakdown"]
