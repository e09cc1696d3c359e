"""`clean_dataset`: the rows that survived every filter, in chat format, exported per category."""

import dagster as dg
import pandas as pd

from distill_assets.defs.partitions import CATEGORY
from distill_assets.defs.stage_output import stage_metadata, stage_table
from distill_assets.lib.chat_template import TOOL_FORMAT_PLAIN, tool_format
from distill_assets.lib.dataset import COLUMNS, clean_frame, export_dataset
from distill_assets.lib.ids import frame_version
from distill_assets.lib.settings import get_settings
from distill_assets.lib.stages import annotate, kept
from distill_assets.lib.tasks import load_tasks
from distill_assets.lib.tokenizer import student_tokenizer
from resources.store import DuckDBStore


@dg.asset(
    name="clean_dataset",
    ins={"decontaminated": dg.AssetIn("decontaminated")},
    partitions_def=CATEGORY,
    group_name="dataset",
    kinds={"duckdb", "pandas", "parquet"},
    code_version="dataset-v2",
    metadata={"partition_expr": "category"},
)
def clean_dataset(context: dg.AssetExecutionContext, store: DuckDBStore, decontaminated: pd.DataFrame):
    """The category's training examples: rows kept by every filter, as chat messages (every turn of a
    conversation, tool calls in OpenAI form, the category's `tools` beside them) that render with the student
    chat template, with a deterministic ~validation_fraction validation split and
    provenance (seed_id, method, difficulty, source, generation_id). Exported to
    $DISTILL_HOME/datasets/<category>/ (train.jsonl, validation.jsonl, data.parquet); version = content hash."""
    category = load_tasks().category(context.partition_key)
    rows = kept(decontaminated)
    annotated, out = clean_frame(rows, category) if len(rows) else (annotate(rows, [], [], []),
                                                                    pd.DataFrame(columns=COLUMNS))
    version = frame_version(out)
    paths = export_dataset(out, get_settings().home / "datasets" / category.name, version)
    md = stage_metadata(store, annotated, category.name,
                        ["example_id", "method", "instruction", "response", "verdict", "reason"], stage="clean_dataset")
    if category.tools:
        fmt = tool_format(student_tokenizer())
        md["tool_format"] = dg.MetadataValue.text(fmt)
        if fmt == TOOL_FORMAT_PLAIN:
            context.log.warning(f"{category.name}: the student chat template has no tool support; its rows render "
                                "tool calls in the plain-text form (lib/conversation.py) for training and evaluation")
    md.update({
        "dataset_version": version,
        "rows": dg.MetadataValue.int(int(len(out))),
        "splits": dg.MetadataValue.json({s: int((out["split"] == s).sum()) for s in ("train", "validation")}),
        "path": dg.MetadataValue.path(str(paths["parquet"].parent)),
        "preview": dg.MetadataValue.md(out.head(5).to_markdown(index=False) if len(out) else "(no rows)"),
    })
    # the table and the verdicts (incl. rows quarantined here, which are not in the table) in one transaction
    return dg.Output(stage_table(context, out, annotated, "clean_dataset"), metadata=md,
                     data_version=dg.DataVersion(version))


assets = [clean_dataset]
