"""`eval_set`: the held-out eval examples of one category, from the task file's separate `eval` file.

Same JSONL schema as the seeds (prompt, difficulty, reference, tests, entry_point, reference_response, tags),
validated line by line (errors name file, line and field) and then by pandera. Held-out production failures
join through `extra_eval_rows`. Nothing in generation reads this asset: only the contamination checks, the
decontaminate stage and evaluation do.
"""


import json
from pathlib import Path

import dagster as dg
import pandas as pd

from distill_assets.errors import InputError, InputErrors
from distill_assets.ids import content_hash, frame_version
from distill_assets.partitions import CATEGORY
from distill_assets.seeds import _records, validate_seed_record
from distill_assets.stages import preview_markdown
from distill_assets.tasks import Category, load_tasks
from resources.store import DuckDBStore

EVAL_COLUMNS = ["eval_id", "category", "prompt", "difficulty", "reference", "tests", "entry_point",
                "reference_response", "source"]


def eval_id(category: str, prompt: str, reference: str | None, source: str) -> str:
    return "e_" + content_hash("eval", category, prompt.strip(), reference, source)


def load_eval_file(path: str | Path, category: Category) -> pd.DataFrame:
    """Parse and validate one category's eval file; raises InputErrors listing every bad line."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, None, "eval file not found")
    records = _records(path)
    errors: list[InputError] = []
    for line, rec in records:
        errors.extend(validate_seed_record(path, line, rec, category.max_seed_chars))
        if category.verify == "label" and rec.get("reference") not in (category.labels or []):
            errors.append(InputError(path, line, "reference",
                                     f"must be one of the category's labels {category.labels}, "
                                     f"got {rec.get('reference')!r}"))
        if category.verify == "math" and rec.get("reference") in (None, ""):
            errors.append(InputError(path, line, "reference", "math eval items need a reference answer"))
        if category.verify == "code" and not (rec.get("tests") and rec.get("entry_point")):
            errors.append(InputError(path, line, "tests" if not rec.get("tests") else "entry_point",
                                     "code eval items need tests and an entry_point"))
    if errors:
        raise InputErrors(errors)
    if not records:
        raise InputError(path, None, None, "no eval rows: a category needs a held-out eval set")
    seen: dict[str, int] = {}
    rows = []
    for line, rec in records:
        prompt = rec["prompt"].strip()
        ref = None if rec.get("reference") is None else str(rec["reference"])
        eid = eval_id(category.name, prompt, ref, "eval")
        if eid in seen:
            errors.append(InputError(path, line, "prompt", f"repeats the eval item on line {seen[eid]}"))
            continue
        seen[eid] = line
        rows.append({
            "eval_id": eid,
            "category": category.name,
            "prompt": prompt,
            "difficulty": rec.get("difficulty") or "medium",
            "reference": ref,
            "tests": json.dumps(rec.get("tests") or []),
            "entry_point": rec.get("entry_point"),
            "reference_response": rec.get("reference_response"),
            "source": "eval",
        })
    if errors:
        raise InputErrors(errors)
    return pd.DataFrame(rows, columns=EVAL_COLUMNS)


GOLD_VERIFY = ("math", "label")  # kinds where a failure's `expected` is the gold answer, as for its seed


def gold_reference(verify: str, expected) -> str | None:
    """A failure's `expected` as the gold `reference` where the category checks answers (math, label): ROUGE-L
    of a correct "... the answer is: 42" against "42" is about 0.2, so a fixed failure would never pass.
    Elsewhere it is only a reference response."""
    ok = isinstance(expected, str) and expected.strip()
    return expected if ok and verify in GOLD_VERIFY else None


def extra_eval_rows(store: DuckDBStore, category: str, verify: str = "none") -> pd.DataFrame:
    """Held-out production failures of the category (split 'heldout', whatever their status, so a resolved one
    keeps gating later adapters) as eval rows; `expected` becomes the reference response, and the gold
    `reference` where `verify` checks answers. Empty when there are none."""
    df = store.query_df(
        "SELECT failure_id, input, expected FROM production_failures "
        "WHERE category = ? AND (split = 'heldout' OR status = 'held_out') ORDER BY failure_id",
        [category],
    )
    if df.empty:
        return pd.DataFrame(columns=EVAL_COLUMNS)
    return pd.DataFrame({
        "eval_id": [eval_id(category, str(i), None, "production_heldout") for i in df["input"]],
        "category": category,
        "prompt": df["input"].astype(str).str.strip(),
        "difficulty": "medium",
        "reference": [gold_reference(verify, e) for e in df["expected"]],
        "tests": "[]",
        "entry_point": None,
        "reference_response": df["expected"].where(df["expected"].notna(), None),
        "source": "production_heldout",
    }, columns=EVAL_COLUMNS).drop_duplicates("eval_id")


def build_eval_frame(category: Category, store: DuckDBStore | None) -> pd.DataFrame:
    from checks.schemas import validate_table

    df = load_eval_file(category.eval, category)
    if store is not None:
        extra = extra_eval_rows(store, category.name, category.verify)
        if not extra.empty:
            df = pd.concat([df, extra[~extra["eval_id"].isin(df["eval_id"])]], ignore_index=True)
    return validate_table("eval_set", df, category.name)


@dg.asset(
    partitions_def=CATEGORY,
    group_name="evaluation",
    kinds={"duckdb", "pandas"},
    code_version="eval-set-v1",
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
