"""`eval_set`: the held-out eval examples of one category (task file `eval`, plus held-out production failures)."""

import dagster as dg
import pandas as pd

from distill_assets.defs.partitions import CATEGORY
from distill_assets.lib.eval_set import build_eval_frame
from distill_assets.lib.ids import frame_version
from distill_assets.lib.stages import preview_markdown
from distill_assets.lib.tasks import load_tasks
from resources.store import DuckDBStore


@dg.asset(
    partitions_def=CATEGORY,
    group_name="evaluation",
    kinds={"duckdb", "pandas"},
    code_version="eval-set-v2",
    metadata={"partition_expr": "category"},
)
def eval_set(context: dg.AssetExecutionContext, store: DuckDBStore) -> dg.Output[pd.DataFrame]:
    """Held-out eval examples of one category (task file `eval`, plus held-out production failures); `eval_id`
    is a content hash. Never an input of generation: the contamination checks compare training data with it."""
    category = load_tasks().category(context.partition_key)
    df = build_eval_frame(category, store)
    return dg.Output(
        df,
        metadata={
            "rows": dg.MetadataValue.int(len(df)),
            "by_source": dg.MetadataValue.json(df["source"].value_counts().to_dict()),
            "by_difficulty": dg.MetadataValue.json(df["difficulty"].value_counts().to_dict()),
            "eval_file": dg.MetadataValue.path(str(category.eval)),
            "preview": dg.MetadataValue.md(preview_markdown(df, ["eval_id", "source", "difficulty", "prompt",
                                                                "reference"])),
        },
        data_version=dg.DataVersion(frame_version(df)),
    )


assets = [eval_set]
