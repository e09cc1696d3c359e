"""`failure_resolution`: the one writer of `model_versions.promoted`, and of the failures a promoted model fixes.

It runs after `eval_report` (whose `eval_gate` check only reports): it records the gate decision, compares the
candidate with the promoted model, and resolves the failures a newly promoted model passes.
"""

import dagster as dg
from pydantic import Field

from checks.eval_report import EvalGateConfig
from distill_assets.lib.evaluation.gate import latest_evaluated_version
from distill_assets.lib.production.promotion import (
    comparison_markdown,
    decide,
    record,
    record_gate,
    resolve_heldout,
    resolve_trained,
)
from distill_assets.lib.tasks import load_tasks
from resources.store import DuckDBStore


class FailureResolutionConfig(EvalGateConfig):
    """The gate's settings (the same fields as the eval_gate check's) and how failures are answered."""

    max_new_tokens: int = Field(default=256, ge=1, description="answer budget for in_training failures")
    answer_trained_failures: bool = Field(default=True, description="run the promoted model on in_training ones")


@dg.asset(
    group_name="production",
    kinds={"duckdb", "python"},
    deps=["eval_report"],
    code_version="failure-resolution-v1",
    description="Held-out gate vs the promoted model (held-out failures + standard eval set), then resolves the "
                "failures a newly promoted model passes.",
)
def failure_resolution(context: dg.AssetExecutionContext, config: FailureResolutionConfig,
                       store: DuckDBStore) -> dg.MaterializeResult:
    tasks = load_tasks()
    candidate, _ = latest_evaluated_version(store)
    if candidate is None:
        raise dg.Failure("no eval_summary rows: materialize eval_report first")
    record_gate(store, candidate, tasks, config.min_win_rate_vs_base, config.severity.upper(), context.run.run_id)
    decision = decide(store, candidate, tasks)
    resolved: list[str] = []
    note = None
    if decision["promoted"]:
        resolved = resolve_heldout(store, decision, tasks)
        if config.answer_trained_failures:
            more, note = resolve_trained(store, candidate, tasks, config.max_new_tokens, log=context.log.info)
            resolved += more
    record(store, decision, len(resolved), context.run.run_id)
    cmp = decision["comparison"]
    counts = store.query_df("SELECT status, count(*) AS n FROM production_failures GROUP BY status")
    return dg.MaterializeResult(metadata={
        "adapter_version": candidate,
        "baseline_version": decision["baseline_version"] or "none (first promotion)",
        "gate_promoted": decision["gate_promoted"],
        "promoted": decision["promoted"],
        "heldout": dg.MetadataValue.json(cmp["heldout"]),
        "eval": dg.MetadataValue.json(cmp["eval"]),
        "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in cmp["reasons"]) or "not worse on either set"),
        "comparison": dg.MetadataValue.md(comparison_markdown(decision)),
        "resolved": len(resolved),
        "in_training_note": note or "",
        "failure_status": dg.MetadataValue.json({r["status"]: int(r["n"]) for r in counts.to_dict("records")}),
    })


assets = [failure_resolution]
