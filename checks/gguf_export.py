"""Checks of `gguf_export`: each GGUF file against the merged HF model in llama.cpp (blocking). Read-only."""

import dagster as dg

from checks.upstream import upstream_artifacts
from distill_assets.lib.artifacts import artifact_row
from distill_assets.lib.export.gguf import gguf_parity_report
from distill_assets.lib.export.parity import evaluate_gguf_report, gguf_thresholds, parity_table
from distill_assets.lib.ids import file_sha256
from resources.store import DuckDBStore


def build_gguf_export_checks(asset_key: dg.AssetKey | str = "gguf_export") -> list[dg.AssetChecksDefinition]:
    @dg.asset_check(asset=asset_key, name="gguf_parity", blocking=True,
                    description="llama.cpp teacher-forced top-1 agreement + perplexity ratio vs merged HF, per quant")
    def gguf_parity(context: dg.AssetCheckExecutionContext, store: DuckDBStore) -> dg.AssetCheckResult:
        rows = upstream_artifacts(context, store, asset_key)  # the materialization being checked
        files = {k: {"path": r["path"], "sha256": r["sha256"]} for k, r in rows.items()}
        parents = {r["parent_artifact_id"] for r in rows.values()}
        if len(parents) != 1:
            raise dg.Failure(f"gguf_export files descend from several merged models: {sorted(parents)}")
        merged = artifact_row(store, parents.pop(), "merged_model")
        report = gguf_parity_report(merged["path"], {k: v["path"] for k, v in files.items()})
        for k, m in report.items():
            m["sha256_ok"] = file_sha256(files[k]["path"]) == files[k]["sha256"]
        passed, rows = evaluate_gguf_report(report)
        return dg.AssetCheckResult(
            passed=passed,
            metadata={"parity": dg.MetadataValue.md(parity_table(rows)), "report": dg.MetadataValue.json(report),
                      "thresholds": dg.MetadataValue.json(gguf_thresholds()), "merged": merged["artifact_id"]},
        )

    return [gguf_parity]
