"""`eval_summary`: one row per (adapter version, variant, category) and per variant over all categories.

Each row carries the task score with its CI, the paired change against the base student (change.py), the
transfer ratio, both judge comparisons with their signal (signal.py) and the efficiency numbers. A judge
comparison without signal is stored with NULL win rates and the reason in `judge_signal` / `base_judge_signal`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from distill_assets.lib.evaluation import pairwise as pw
from distill_assets.lib.evaluation.change import paired_changes
from distill_assets.lib.evaluation.metrics import OVERALL, mean_with_ci, percentile, transfer_ratios
from distill_assets.lib.evaluation.signal import no_signal

SUMMARY_COLUMNS = [
    "adapter_version", "variant", "category", "metric", "status", "reason", "n", "n_scored", "task_score",
    "task_ci_low", "task_ci_high", "infra_errors", "teacher_score", "transfer_ratio", "transfer_target",
    "meets_target", "win_rate_vs_teacher", "win_ci_low", "win_ci_high", "n_judged", "wins", "ties", "losses",
    "consistency_rate", "unparseable", "judge_errors", "win_rate_vs_base", "base_win_ci_low", "base_win_ci_high",
    "base_consistency_rate", "base_unparseable", "latency_p50_s", "latency_p95_s", "tokens_per_s", "peak_mem_mb",
    "size_bytes", "usd_per_1m_tokens", "cost_vs_teacher", "run_id", "created_at",
    # added with the paired change vs the base student and the judge's signal (ledger MIGRATIONS)
    "n_paired", "base_score", "delta_vs_base", "delta_ci_low", "delta_ci_high", "change", "judge_signal",
    "base_judge_signal",
]

_INT_COLUMNS = ("size_bytes", "n_judged", "wins", "ties", "losses", "unparseable", "judge_errors",
                "base_unparseable", "infra_errors", "n_paired")


def _judged_frame(results: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """The judge columns of eval_results in the shape pairwise.win_rates expects."""
    r = results[results[f"{prefix}_verdict"].notna()]
    return pd.DataFrame({"variant": r["variant"], "category": r["category"],
                         "judge_verdict": r[f"{prefix}_verdict"], "judge_score": r[f"{prefix}_score"].astype(float),
                         "consistent": r[f"{prefix}_consistent"]})


def judge_rates(results: pd.DataFrame, prefix: str, n_boot: int) -> dict[tuple[str, str], dict]:
    """(variant, category) -> win_rates row, '__all__' included. A judge without signal over all of a
    variant's pairs has none in any one category either, even when a handful of pairs there look consistent."""
    frame = _judged_frame(results, prefix)
    per_cat = pw.win_rates(frame, ["variant", "category"], n_boot=n_boot)
    overall = pw.win_rates(frame, ["variant"], n_boot=n_boot).assign(category=OVERALL)
    silent = {r["variant"]: r["judge_signal"] for r in overall.to_dict("records") if no_signal(r["judge_signal"])}
    out = {}
    for r in pd.concat([per_cat, overall]).to_dict("records"):
        if r["variant"] in silent and r["category"] != OVERALL:
            r.update(judge_signal=silent[r["variant"]], win_rate=np.nan, win_ci_low=np.nan, win_ci_high=np.nan)
        out[(r["variant"], r["category"])] = r
    return out


def judge_signals(summary: pd.DataFrame, column: str = "judge_signal") -> dict[str, str]:
    """variant -> its overall judge signal (from summary rows)."""
    rows = summary[(summary["category"] == OVERALL) & summary[column].notna()] if column in summary.columns \
        else summary.iloc[0:0]
    return dict(zip(rows["variant"], rows[column]))


def summary_table(results: pd.DataFrame, efficiency: pd.DataFrame, categories: dict[str, Any], *,
                  adapter_version: str, run_id: str, n_boot: int = 2000,
                  created_at: datetime | None = None) -> pd.DataFrame:
    """eval_summary: one row per variant x category (and '__all__'); skipped variants get one '__all__' row."""
    created_at = created_at or datetime.now(UTC)
    transfer = transfer_ratios(results, categories)
    tkey = {(r.variant, r.category): r for r in transfer.itertuples(index=False)}
    jkey, bkey = judge_rates(results, "judge", n_boot), judge_rates(results, "judge_vs_base", n_boot)
    ckey = {(r["variant"], r["category"]): r for r in paired_changes(results, n_boot=n_boot).to_dict("records")}
    ekey = {r["variant"]: r for r in efficiency.to_dict("records")} if not efficiency.empty else {}
    rows = []
    for variant, vg in results.groupby("variant", sort=False):
        groups = [(c, g) for c, g in vg.groupby("category", sort=True)] + [(OVERALL, vg)]
        for cat, g in groups:
            task = mean_with_ci(g["score"], n_boot=n_boot)
            tr = tkey.get((variant, cat))
            j, b, e = jkey.get((variant, cat), {}), bkey.get((variant, cat), {}), ekey.get(variant, {})
            ch = ckey.get((variant, cat), {})
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
                "n_paired": ch.get("n_paired"), "base_score": ch.get("base_score", np.nan),
                "delta_vs_base": ch.get("delta_vs_base", np.nan), "delta_ci_low": ch.get("delta_ci_low", np.nan),
                "delta_ci_high": ch.get("delta_ci_high", np.nan), "change": ch.get("change"),
                "win_rate_vs_teacher": j.get("win_rate", np.nan), "win_ci_low": j.get("win_ci_low", np.nan),
                "win_ci_high": j.get("win_ci_high", np.nan), "n_judged": j.get("n_valid", 0),
                "wins": j.get("wins", 0), "ties": j.get("ties", 0), "losses": j.get("losses", 0),
                "consistency_rate": j.get("consistency_rate", np.nan), "judge_signal": j.get("judge_signal"),
                "unparseable": j.get("unparseable", 0), "judge_errors": j.get("judge_errors", 0),
                "win_rate_vs_base": b.get("win_rate", np.nan), "base_win_ci_low": b.get("win_ci_low", np.nan),
                "base_win_ci_high": b.get("win_ci_high", np.nan),
                "base_consistency_rate": b.get("consistency_rate", np.nan),
                "base_judge_signal": b.get("judge_signal"), "base_unparseable": b.get("unparseable", 0),
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
    for c in _INT_COLUMNS:
        out[c] = pd.to_numeric(out[c], errors="coerce").astype("Int64")
    for c in ("base_score", "delta_vs_base", "delta_ci_low", "delta_ci_high", "win_rate_vs_teacher", "win_ci_low",
              "win_ci_high", "win_rate_vs_base", "base_win_ci_low", "base_win_ci_high"):
        out[c] = pd.to_numeric(out[c], errors="coerce").astype(float)
    return out


__all__ = ["SUMMARY_COLUMNS", "judge_rates", "judge_signals", "summary_table"]
