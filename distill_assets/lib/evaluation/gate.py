"""The eval gate: promote the merged student only if it beats the base student and meets every category's
transfer target.

A pairwise judge without signal (signal.py) has no win rate vs the base; the gate then skips that criterion
and says so in `notes`, rather than failing the student for the judge's blindness.

`gate_decision` is pure. `record_decision` writes the decision to `model_versions` (adapter_version, promoted,
...), which the retraining sensor reads: the newest row with promoted = true is the model to serve. Only the
`failure_resolution` asset calls it; the `eval_gate` check computes the same decision and only reports it.
"""

import json
import math
from datetime import UTC, datetime

import pandas as pd

from distill_assets.lib.evaluation.metrics import BASE, MERGED, OVERALL
from distill_assets.lib.evaluation.signal import describe, no_signal
from distill_assets.lib.tasks import TaskFile
from resources.store import DuckDBStore

MIN_WIN_RATE_VS_BASE = 0.5  # the student must beat the base: a win rate above a coin flip


def _num(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f


def gate_targets(tasks: TaskFile) -> dict[str, float]:
    """{category: eval_target_transfer} from the task file."""
    return {c.name: float(c.eval_target_transfer) for c in tasks.categories}


def gate_decision(summary: pd.DataFrame, targets: dict[str, float],
                  min_win_rate_vs_base: float = MIN_WIN_RATE_VS_BASE) -> dict:
    """Pure gate over one adapter version's eval_summary rows. Returns passed, reasons and the numbers."""
    reasons: list[str] = []
    notes: list[str] = []
    m = summary[summary["variant"] == MERGED]
    overall = m[m["category"] == OVERALL]
    if overall.empty:
        return {"passed": False, "reasons": ["the merged student was not evaluated"], "failed_categories": [],
                "win_rate_vs_base": None, "win_rate_vs_teacher": None, "transfer_ratio": None, "per_category": {},
                "judge_vs_base": None, "notes": []}
    o = overall.iloc[0]
    wb = _num(o.get("win_rate_vs_base"))
    base_signal = o.get("base_judge_signal")
    if no_signal(base_signal):
        wb = float("nan")
        notes.append(f"win rate vs base unavailable, criterion skipped: {describe(base_signal)}")
    elif math.isnan(wb):
        reasons.append(f"no valid judge verdicts vs the {BASE} (base not evaluated or all verdicts unparseable)")
    elif not wb > min_win_rate_vs_base:
        reasons.append(f"win rate vs base {wb:.1%} is not above {min_win_rate_vs_base:.0%}")
    failed, per_cat = [], {}
    for cat, target in sorted(targets.items()):
        row = m[m["category"] == cat]
        ratio = _num(row.iloc[0]["transfer_ratio"]) if not row.empty else float("nan")
        per_cat[cat] = {"transfer_ratio": None if math.isnan(ratio) else ratio, "target": target,
                        **_change(row.iloc[0] if not row.empty else None)}
        if math.isnan(ratio):
            failed.append(cat)
            reasons.append(f"{cat}: no transfer ratio (not evaluated, or the teacher scored 0)")
        elif ratio < target:
            failed.append(cat)
            reasons.append(f"{cat}: transfer {ratio:.1%} below target {target:.0%}")
        # without a judge's word, the paired task-metric change is the evidence against the base
        if no_signal(base_signal) and per_cat[cat]["change"] == "regressed":
            if cat not in failed:
                failed.append(cat)
            reasons.append(f"{cat}: worse than the base student on the paired task metric "
                           f"(95% CI {per_cat[cat]['delta_ci_low']:+.3f} to {per_cat[cat]['delta_ci_high']:+.3f})")
    return {"passed": not reasons, "reasons": reasons, "failed_categories": failed,
            "win_rate_vs_base": None if math.isnan(wb) else wb,
            "win_ci_low": None if math.isnan(_num(o.get("base_win_ci_low"))) else _num(o.get("base_win_ci_low")),
            "win_rate_vs_teacher": None if math.isnan(_num(o.get("win_rate_vs_teacher"))) else _num(o.get("win_rate_vs_teacher")),
            "transfer_ratio": None if math.isnan(_num(o.get("transfer_ratio"))) else _num(o.get("transfer_ratio")),
            "per_category": per_cat, "notes": notes,
            "judge_vs_base": describe(base_signal) if isinstance(base_signal, str) else None}


def _change(row) -> dict:
    """The paired change vs the base of one category row; the gate fails a regressed category when the judge
    has no signal."""
    out = {}
    for k in ("delta_vs_base", "delta_ci_low", "delta_ci_high"):
        v = _num(row.get(k)) if row is not None else float("nan")
        out[k] = None if math.isnan(v) else v
    change = row.get("change") if row is not None else None
    out["change"] = change if isinstance(change, str) else None
    return out


def latest_evaluated_version(store: DuckDBStore) -> tuple[str | None, str | None]:
    """(adapter_version, run_id) of the newest eval_summary rows; (None, None) before any evaluation."""
    if not store.table_exists("eval_summary"):
        return None, None
    latest = store.query_df("SELECT adapter_version, run_id FROM eval_summary ORDER BY created_at DESC LIMIT 1")
    if latest.empty:
        return None, None
    return str(latest.iloc[0]["adapter_version"]), str(latest.iloc[0]["run_id"])


def decide_version(store: DuckDBStore, adapter_version: str, targets: dict[str, float],
                   min_win_rate_vs_base: float = MIN_WIN_RATE_VS_BASE) -> dict:
    """gate_decision over the eval_summary rows of one adapter version (read-only)."""
    summary = store.query_df("SELECT * FROM eval_summary WHERE adapter_version = ?", [adapter_version])
    return gate_decision(summary, targets, min_win_rate_vs_base)


def record_decision(store: DuckDBStore, adapter_version: str, decision: dict, severity: str, run_id: str) -> None:
    """Write (replace) the `model_versions` row of `adapter_version`. The one writer of the promoted flag calls it."""
    row = pd.DataFrame([{
        "adapter_version": adapter_version, "promoted": bool(decision["passed"]),
        "win_rate_vs_base": decision.get("win_rate_vs_base"), "win_ci_low": decision.get("win_ci_low"),
        "win_rate_vs_teacher": decision.get("win_rate_vs_teacher"), "transfer_ratio": decision.get("transfer_ratio"),
        "failed_categories": json.dumps(decision["failed_categories"]), "reasons": json.dumps(decision["reasons"]),
        "severity": severity, "eval_run_id": run_id, "decided_at": datetime.now(UTC),
    }])
    store.insert_df("model_versions", row, on_conflict="replace")
