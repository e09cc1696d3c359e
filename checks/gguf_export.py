"""Checks of `gguf_export`: each GGUF file against the merged HF model in llama.cpp (blocking). Read-only."""

import dagster as dg

from distill_assets.lib.export.gguf import gguf_parity_report
from distill_assets.lib.export.parity import evaluate_gguf_report, gguf_parity_table, gguf_thresholds, latest_gguf_files
from distill_assets.lib.ids import file_sha256
from resources.store import DuckDBStore


def build_gguf_export_checks(asset_key: dg.AssetKey | str = "gguf_export") -> list[dg.AssetChecksDefinition]:
    @dg.asset_check(asset=asset_key, name="gguf_parity", blocking=True,
                    description="llama.cpp teacher-forced top-1 agreement + perplexity ratio vs merged HF, per quant")
    def gguf_parity(store: DuckDBStore) -> dg.AssetCheckResult:
        merged, files = latest_gguf_files(store)
        report = gguf_parity_report(merged["path"], {k: v["path"] for k, v in files.items()})
        for k, m in report.items():
            m["sha256_ok"] = file_sha256(files[k]["path"]) == files[k]["sha256"]
        passed, rows = evaluate_gguf_report(report)
        return dg.AssetCheckResult(
            passed=passed,
            metadata={"parity": dg.MetadataValue.md(gguf_parity_table(rows)), "report": dg.MetadataValue.json(report),
                      "thresholds": dg.MetadataValue.json(gguf_thresholds()), "merged": merged["artifact_id"]},
        )

    return [gguf_parity]
