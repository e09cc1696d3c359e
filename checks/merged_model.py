"""Checks of `merged_model`: merged logits equal base + unmerged adapter logits (blocking). Read-only."""

import dagster as dg

from checks.upstream import upstream_artifact
from distill_assets.lib.export.merge import merge_parity
from distill_assets.lib.export.parity import MERGE_MAX_ABS_DIFF, merge_passed
from resources.store import DuckDBStore


def build_merged_model_checks(asset_key: dg.AssetKey | str = "merged_model") -> list[dg.AssetChecksDefinition]:
    @dg.asset_check(asset=asset_key, name="merged_parity", blocking=True,
                    description="merged vs base+adapter logits, fp32, max|diff| <= 1e-3")
    def merged_parity(context: dg.AssetCheckExecutionContext, store: DuckDBStore) -> dg.AssetCheckResult:
        merged = upstream_artifact(context, store, asset_key)  # the materialization being checked
        md = merged["metadata"]
        r = merge_parity(md["base_model_path"], md["adapter_path"], merged["path"])
        return dg.AssetCheckResult(
            passed=merge_passed(r),
            metadata={"max_abs_diff": r["max_abs_diff"], "threshold": MERGE_MAX_ABS_DIFF,
                      "top1_agreement": r["top1_agreement"], "prompts": r["prompts"], "tokens": r["tokens"],
                      "merged": merged["artifact_id"]},
        )

    return [merged_parity]
