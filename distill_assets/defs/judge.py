"""The `judged` asset: LLM-as-judge scoring (lib/filters/judge.py) of the deduplicated rows."""

import dagster as dg
import pandas as pd

from distill_assets.defs.partitions import CATEGORY
from distill_assets.defs.stage_output import publish_stage
from distill_assets.lib.filters.judge import judge_frame, score_distribution, score_signal
from distill_assets.lib.stages import kept
from distill_assets.lib.tasks import load_tasks
from resources.llm import LLMResource
from resources.store import DuckDBStore


@dg.asset(
    partitions_def=CATEGORY,
    group_name="filtering",
    kinds={"python", "duckdb", "openai"},
    code_version="judged-v1",
    metadata={"partition_expr": "category"},
)
def judged(context: dg.AssetExecutionContext, deduplicated: pd.DataFrame, store: DuckDBStore,
           judge: LLMResource) -> dg.Output:
    """Deduplicated rows scored 1-5 by the judge model (accuracy, helpfulness, coherence, overall; temperature
    0, same call cache and ledger as the teacher). Keeps overall >= `filters.judge_min_score`; unreadable
    verdicts are `judge_unparseable`, failed calls `judge_error` (quarantined)."""
    cat = load_tasks().category(context.partition_key)
    rows = kept(deduplicated)
    stats: dict = {}
    if rows.empty or not cat.filters.judge_enabled:  # no judge server is started for a category without one
        df = judge_frame(rows, cat, lambda reqs: [])
    else:
        with judge.session(store, run_id=context.run.run_id, logger=context.log) as s:
            df = judge_frame(rows, cat, lambda reqs: s.complete(reqs, category=cat.name, label="judge"),
                             judge_model=s.model)
            stats = dict(s.stats)
    counts = df["judge_status"].value_counts().to_dict() if not df.empty else {}
    scores = df["judge_score"].dropna()
    signal = score_signal(scores)
    if signal.startswith("no signal"):
        context.log.warning(f"judge on {cat.name}: {signal}; its threshold sorts rows by that one score, "
                            "not by quality")
    extra = {
        "judge_signal": dg.MetadataValue.text(signal),
        "score_distribution": dg.MetadataValue.json(score_distribution(df)),
        "judge": dg.MetadataValue.json(judge.describe()),
        "judge_status": dg.MetadataValue.json({str(k): int(v) for k, v in counts.items()}),
        "judge_calls": dg.MetadataValue.json(stats),
        "mean_judge_score": dg.MetadataValue.float(float(scores.mean()) if len(scores) else float("nan")),
    }
    return publish_stage(context, store, df, stage="judged", extra_metadata=extra,
                         preview_columns=["example_id", "instruction", "judge_score", "judge_rationale",
                                          "verdict", "reason"])


assets = [judged]
