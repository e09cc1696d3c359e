"""Checks of `awq_export`: the AWQ folder against the merged model, teacher-forced in transformers (blocking).
Read-only."""

import dagster as dg

from checks.upstream import metadata_value, upstream_artifact, upstream_record
from distill_assets.lib.artifacts import artifact_row, dir_digest
from distill_assets.lib.export.awq import awq_parity_report
from distill_assets.lib.export.parity import awq_thresholds, evaluate_parity_report, parity_table
from resources.store import DuckDBStore


def build_awq_export_checks(asset_key: dg.AssetKey | str = "awq_export") -> list[dg.AssetChecksDefinition]:
    @dg.asset_check(asset=asset_key, name="awq_parity", blocking=True,
                    description="transformers teacher-forced top-1 agreement + perplexity ratio of the decompressed "
                                "AWQ model vs the merged model, on the fixed held-out parity prompts")
    def awq_parity(context: dg.AssetCheckExecutionContext, store: DuckDBStore) -> dg.AssetCheckResult:
        record = upstream_record(context, asset_key)  # the materialization being checked
        status = metadata_value(record, "status") if record is not None else None
        if isinstance(status, str) and status.startswith("skipped"):
            # nothing was written, so nothing passed; WARN keeps the rest of the graph running
            return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN,
                                       description=f"no AWQ folder to check: {status}", metadata={"status": status})
        row = upstream_artifact(context, store, asset_key)
        merged = artifact_row(store, row["parent_artifact_id"], "merged_model")
        report = awq_parity_report(merged["path"], row["path"])
        for m in report.values():
            m["sha256_ok"] = dir_digest(row["path"])[0] == row["sha256"]
        passed, rows = evaluate_parity_report(report, awq_thresholds())
        return dg.AssetCheckResult(
            passed=passed,
            metadata={"parity": dg.MetadataValue.md(parity_table(rows)), "report": dg.MetadataValue.json(report),
                      "thresholds": dg.MetadataValue.json(awq_thresholds()), "merged": merged["artifact_id"],
                      "awq": row["artifact_id"]},
        )

    return [awq_parity]
