"""Eval gate on `eval_report`: promote the merged student only if it beats the base student and meets every
category's transfer target. The decision is written to `model_versions` (adapter_version, promoted, ...),
which the retraining sensor reads: the newest row with promoted = true is the model to serve.

Severity (WARN or ERROR) is configurable: run config `severity`, else env DISTILL_EVAL_GATE_SEVERITY, else WARN.
The promoted flag does not depend on severity; severity only decides whether a failed gate stops the run.
"""


import json
import math
import os
from datetime import datetime, timezone

import dagster as dg
import pandas as pd
from pydantic import Field

from distill_assets.evaluation.metrics import BASE, MERGED, OVERALL
from distill_assets.tasks import load_tasks
from resources.store import DuckDBStore

MODEL_VERSIONS_DDL = """
    CREATE TABLE IF NOT EXISTS model_versions (
        adapter_version VARCHAR PRIMARY KEY, promoted BOOLEAN, win_rate_vs_base DOUBLE, win_ci_low DOUBLE,
        win_rate_vs_teacher DOUBLE, transfer_ratio DOUBLE, failed_categories VARCHAR, reasons VARCHAR,
        severity VARCHAR, eval_run_id VARCHAR, decided_at TIMESTAMPTZ)"""


class EvalGateConfig(dg.Config):
    severity: str = Field(default_factory=lambda: os.environ.get("DISTILL_EVAL_GATE_SEVERITY", "WARN").upper(),
                          description="WARN or ERROR when the gate fails")
    min_win_rate_vs_base: float = Field(default=0.5, ge=0, le=1, description="the student must beat the base")


def _num(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f


def gate_decision(summary: pd.DataFrame, targets: dict[str, float], min_win_rate_vs_base: float = 0.5) -> dict:
    """Pure gate over one adapter version's eval_summary rows. Returns passed, reasons and the numbers."""
    reasons: list[str] = []
    m = summary[summary["variant"] == MERGED]
    overall = m[m["category"] == OVERALL]
    if overall.empty:
        return {"passed": False, "reasons": ["the merged student was not evaluated"], "failed_categories": [],
                "win_rate_vs_base": None, "win_rate_vs_teacher": None, "transfer_ratio": None, "per_category": {}}
    o = overall.iloc[0]
    wb = _num(o.get("win_rate_vs_base"))
    if math.isnan(wb):
        reasons.append(f"no valid judge verdicts vs the {BASE} (base not evaluated or all verdicts unparseable)")
    elif not wb > min_win_rate_vs_base:
        reasons.append(f"win rate vs base {wb:.1%} is not above {min_win_rate_vs_base:.0%}")
    failed, per_cat = [], {}
    for cat, target in sorted(targets.items()):
        row = m[m["category"] == cat]
        ratio = _num(row.iloc[0]["transfer_ratio"]) if not row.empty else float("nan")
        per_cat[cat] = {"transfer_ratio": None if math.isnan(ratio) else ratio, "target": target}
        if math.isnan(ratio):
            failed.append(cat)
            reasons.append(f"{cat}: no transfer ratio (not evaluated, or the teacher scored 0)")
        elif ratio < target:
            failed.append(cat)
            reasons.append(f"{cat}: transfer {ratio:.1%} below target {target:.0%}")
    return {"passed": not reasons, "reasons": reasons, "failed_categories": failed,
            "win_rate_vs_base": None if math.isnan(wb) else wb,
            "win_ci_low": None if math.isnan(_num(o.get("base_win_ci_low"))) else _num(o.get("base_win_ci_low")),
            "win_rate_vs_teacher": None if math.isnan(_num(o.get("win_rate_vs_teacher"))) else _num(o.get("win_rate_vs_teacher")),
            "transfer_ratio": None if math.isnan(_num(o.get("transfer_ratio"))) else _num(o.get("transfer_ratio")),
            "per_category": per_cat}


def record_decision(store: DuckDBStore, adapter_version: str, decision: dict, severity: str, run_id: str) -> None:
    row = pd.DataFrame([{
        "adapter_version": adapter_version, "promoted": bool(decision["passed"]),
        "win_rate_vs_base": decision.get("win_rate_vs_base"), "win_ci_low": decision.get("win_ci_low"),
        "win_rate_vs_teacher": decision.get("win_rate_vs_teacher"), "transfer_ratio": decision.get("transfer_ratio"),
        "failed_categories": json.dumps(decision["failed_categories"]), "reasons": json.dumps(decision["reasons"]),
        "severity": severity, "eval_run_id": run_id, "decided_at": datetime.now(timezone.utc),
    }])
    with store.connect() as conn:
        conn.execute(MODEL_VERSIONS_DDL)
        store.insert_df("model_versions", row, on_conflict="replace")


def _evaluated_version(context, store: DuckDBStore) -> tuple[str | None, str | None]:
    ev = context.instance.get_latest_materialization_event(dg.AssetKey("eval_report"))
    mat = ev.asset_materialization if ev is not None else None
    if mat is not None and "adapter_version" in mat.metadata:
        return str(mat.metadata["adapter_version"].value), ev.run_id
    latest = store.query_df("SELECT adapter_version, run_id FROM eval_summary ORDER BY created_at DESC LIMIT 1")
    if latest.empty:
        return None, None
    return str(latest.iloc[0]["adapter_version"]), str(latest.iloc[0]["run_id"])


@dg.asset_check(asset="eval_report", blocking=True,
                description="Student beats base (win rate > 50%) and meets each category's transfer target; "
                            "writes model_versions.promoted.")
def eval_gate(context: dg.AssetCheckExecutionContext, config: EvalGateConfig,
              store: DuckDBStore) -> dg.AssetCheckResult:
    severity = dg.AssetCheckSeverity.ERROR if config.severity.upper() == "ERROR" else dg.AssetCheckSeverity.WARN
    version, run_id = _evaluated_version(context, store)
    if version is None:
        return dg.AssetCheckResult(passed=False, severity=severity, metadata={"reason": "no eval_summary rows"})
    summary = store.query_df("SELECT * FROM eval_summary WHERE adapter_version = ?", [version])
    tasks = load_tasks()
    targets = {c.name: float(c.eval_target_transfer) for c in tasks.categories}
    decision = gate_decision(summary, targets, config.min_win_rate_vs_base)
    record_decision(store, version, decision, severity.value, run_id or context.run.run_id)
    table = pd.DataFrame([{"category": k, **v} for k, v in decision["per_category"].items()])
    return dg.AssetCheckResult(
        passed=bool(decision["passed"]), severity=severity,
        metadata={
            "adapter_version": version, "promoted": bool(decision["passed"]),
            "win_rate_vs_base": decision["win_rate_vs_base"] if decision["win_rate_vs_base"] is not None else "n/a",
            "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in decision["reasons"]) or "all criteria met"),
            "transfer_by_category": dg.MetadataValue.md(table.to_markdown(index=False) if not table.empty else "-"),
        })


asset_checks = [eval_gate]
