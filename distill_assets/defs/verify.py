"""The `verified` asset: the category's verifier (lib/filters/verify.py) over the rows the judge kept."""

import json

import dagster as dg
import pandas as pd

from distill_assets.defs.partitions import CATEGORY
from distill_assets.defs.stage_output import publish_stage
from distill_assets.lib.filters.verify import apply_verification
from distill_assets.lib.stages import kept
from distill_assets.lib.tasks import load_tasks
from distill_assets.lib.verification.test_writer import write_missing_tests
from resources.llm import LLMResource
from resources.store import DuckDBStore


@dg.asset(
    partitions_def=CATEGORY,
    group_name="filtering",
    kinds={"python", "duckdb"},
    code_version="verified-v2",
    metadata={"partition_expr": "category"},
)
def verified(context: dg.AssetExecutionContext, judged: pd.DataFrame, store: DuckDBStore,
             teacher: LLMResource) -> dg.Output:
    """Rows the judge kept, checked by the category's verifier: math answers (reference or self-consistency),
    labels, or code run against its tests in the sandbox. States: pass / fail / unverifiable / infra_error;
    infra errors are quarantined, unverifiable rows follow `filters.keep_unverifiable`. Code rows without
    tests get tests the teacher writes from the instruction alone."""
    cat = load_tasks().category(context.partition_key)
    rows, written = kept(judged), None
    if cat.verify == "code" and cat.filters.generate_tests and not rows.empty:
        with teacher.session(store, run_id=context.run.run_id, logger=context.log) as s:
            rows, written = write_missing_tests(rows, cat.filters.generated_tests,
                                                lambda reqs: s.complete(reqs, category=cat.name, label="tests"))
    df = apply_verification(rows, cat)
    counts = df["verification_status"].value_counts().to_dict() if not df.empty else {}
    isolation = sorted({json.loads(e).get("network_isolation") for e in df["evidence"]} - {None}) \
        if not df.empty else []
    extra = {"verify": dg.MetadataValue.text(cat.verify),
             "verification_status": dg.MetadataValue.json({str(k): int(v) for k, v in counts.items()})}
    if isolation:
        extra["sandbox_network_isolation"] = dg.MetadataValue.text(", ".join(isolation))
    sandboxes = sorted({json.loads(e).get("isolation") for e in df["evidence"]} - {None}) if not df.empty else []
    if sandboxes:
        extra["sandbox_isolation"] = dg.MetadataValue.text(", ".join(sandboxes))
    if written is not None:
        extra["teacher_written_tests"] = dg.MetadataValue.json(written)
    return publish_stage(context, store, df, stage="verified", extra_metadata=extra,
                         preview_columns=["example_id", "instruction", "verification_answer",
                                          "verification_status", "verdict", "reason"])


assets = [verified]
