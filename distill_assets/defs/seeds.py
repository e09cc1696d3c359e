"""`seed_prompts`: the task's seed prompts per category, plus the production failures routed to it."""

import dagster as dg
import pandas as pd

from distill_assets.defs.partitions import CATEGORY
from distill_assets.lib.ids import frame_version
from distill_assets.lib.production.state import mark_in_training, production_seed_rows
from distill_assets.lib.records import SEED_COLUMNS, load_seed_file
from distill_assets.lib.schemas import validate_table
from distill_assets.lib.stages import preview_markdown
from distill_assets.lib.tasks import load_tasks
from resources.store import DuckDBStore


@dg.asset(
    partitions_def=CATEGORY,
    group_name="seeds",
    kinds={"duckdb", "pandas"},
    code_version="seeds-v2",
    metadata={"partition_expr": "category"},
)
def seed_prompts(context: dg.AssetExecutionContext, store: DuckDBStore) -> dg.Output[pd.DataFrame]:
    """Seed prompts of one category (task file `seeds`, plus production failures routed to it), validated
    by pandera; `seed_id` is a content hash. The held-out `eval` file is never read here."""
    category = load_tasks().category(context.partition_key)
    df = load_seed_file(category.seeds, category)
    prod = production_seed_rows(store, category.name)
    if not prod.empty:
        df = pd.concat([df, prod[SEED_COLUMNS]], ignore_index=True).drop_duplicates("seed_id")
    df = validate_table("seed_prompts", df, category.name)
    version = frame_version(df, ["seed_id", "prompt", "reference", "tests", "difficulty"])
    if not prod.empty:
        # the production state module is the one writer of failure status; this only asks it to move them
        mark_in_training(store, prod)
    return dg.Output(
        df,
        metadata={
            "rows": dg.MetadataValue.int(len(df)),
            "by_source": dg.MetadataValue.json(df["source"].value_counts().to_dict()),
            "by_difficulty": dg.MetadataValue.json(df["difficulty"].value_counts().to_dict()),
            "seed_file": dg.MetadataValue.path(str(category.seeds)),
            "preview": dg.MetadataValue.md(preview_markdown(df, ["seed_id", "difficulty", "prompt", "reference"])),
        },
        data_version=dg.DataVersion(version),
    )


assets = [seed_prompts]
