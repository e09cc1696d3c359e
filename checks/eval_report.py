"""Checks of `eval_report`: the eval gate (student beats the base and meets each category's transfer target).

Read-only: the check computes the gate decision (lib/evaluation/gate.py) and reports it; the `model_versions`
row is written by the `failure_resolution` asset, the one writer of the promoted flag. Severity (WARN or ERROR)
is run config `severity`, else env DISTILL_EVAL_GATE_SEVERITY, else WARN; it only decides whether a failed gate
stops the run, never the decision.
"""

import dagster as dg
import pandas as pd
from pydantic import Field

from checks.upstream import metadata_value, upstream_record
from distill_assets.lib.evaluation.gate import (
    MIN_WIN_RATE_VS_BASE,
    decide_version,
    gate_targets,
    latest_evaluated_version,
)
from distill_assets.lib.settings import eval_gate_severity
from distill_assets.lib.tasks import load_tasks
from resources.store import DuckDBStore


class EvalGateConfig(dg.Config):
    severity: str = Field(default_factory=eval_gate_severity, description="WARN or ERROR when the gate fails")
    min_win_rate_vs_base: float = Field(default=MIN_WIN_RATE_VS_BASE, ge=0, le=1,
                                        description="the student must beat the base")


def _evaluated_version(context: dg.AssetCheckExecutionContext, store: DuckDBStore,
                       asset_key: dg.AssetKey) -> tuple[str | None, str | None]:
    rec = upstream_record(context, asset_key)  # the materialization being checked
    version = metadata_value(rec, "adapter_version") if rec is not None else None
    if version is not None:
        return str(version), rec.run_id
    return latest_evaluated_version(store)


def build_eval_report_checks(asset_key: dg.AssetKey | str = "eval_report") -> list[dg.AssetChecksDefinition]:
    key = dg.AssetKey.from_coercible(asset_key)

    @dg.asset_check(asset=key, name="eval_gate", blocking=True,
                    description="Student beats base (win rate > 50%, skipped when the judge has no signal) and "
                                "meets each category's transfer target; failure_resolution records the decision "
                                "in model_versions.")
    def eval_gate(context: dg.AssetCheckExecutionContext, config: EvalGateConfig,
                  store: DuckDBStore) -> dg.AssetCheckResult:
        severity = dg.AssetCheckSeverity.ERROR if config.severity.upper() == "ERROR" else dg.AssetCheckSeverity.WARN
        version, _ = _evaluated_version(context, store, key)
        if version is None:
            return dg.AssetCheckResult(passed=False, severity=severity, metadata={"reason": "no eval_summary rows"})
        decision = decide_version(store, version, gate_targets(load_tasks()), config.min_win_rate_vs_base)
        table = pd.DataFrame([{"category": k, **v} for k, v in decision["per_category"].items()])
        wb = decision["win_rate_vs_base"]
        return dg.AssetCheckResult(
            passed=bool(decision["passed"]), severity=severity,
            metadata={
                "adapter_version": version, "promoted": bool(decision["passed"]),
                # a judge without signal: its win rate is unavailable, and the gate says so instead of using it
                "win_rate_vs_base": wb if wb is not None else (decision.get("judge_vs_base") or "n/a"),
                "judge_vs_base": decision.get("judge_vs_base") or "n/a",
                "notes": dg.MetadataValue.md("\n".join(f"- {n}" for n in decision.get("notes", [])) or "-"),
                "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in decision["reasons"]) or "all criteria met"),
                "transfer_by_category": dg.MetadataValue.md(table.to_markdown(index=False) if not table.empty else "-"),
            })

    return [eval_gate]
