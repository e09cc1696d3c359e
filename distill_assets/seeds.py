"""`seed_prompts`: the task's seed prompts per category, loaded from JSONL or CSV and validated.

Bad input fails the whole file with every error named by file, line and field, before anything is written.
"""


import csv
import io
import json
from pathlib import Path

import dagster as dg
import pandas as pd

from distill_assets.errors import InputError, InputErrors
from distill_assets.ids import frame_version, seed_id
from distill_assets.partitions import CATEGORY
from distill_assets.stages import preview_markdown
from distill_assets.tasks import Category, load_tasks
from resources.store import DuckDBStore

SEED_COLUMNS = ["seed_id", "category", "prompt", "difficulty", "reference", "tests", "entry_point",
                "reference_response", "tags", "source", "source_file", "source_line"]
DIFFICULTIES = {"easy", "medium", "hard"}
_OPTIONAL_STR = ("reference", "entry_point", "reference_response")


def _records(path: Path) -> list[tuple[int, dict]]:
    """(line, record) pairs from JSONL or CSV, with precise errors for undecodable or unparsable lines."""
    data = path.read_bytes()
    errors: list[InputError] = []
    if path.suffix.lower() == ".csv":
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            raise InputError(path, line, None, f"not UTF-8 (byte 0x{data[e.start]:02x})") from None
        reader = csv.DictReader(io.StringIO(text))
        rows = []
        for rec in reader:
            for k in ("tests", "tags"):
                if rec.get(k):
                    try:
                        rec[k] = json.loads(rec[k])
                    except json.JSONDecodeError:
                        errors.append(InputError(path, reader.line_num, k, "must be a JSON list in CSV"))
            rows.append((reader.line_num, {k: (v if v != "" else None) for k, v in rec.items()}))
        if errors:
            raise InputErrors(errors)
        return rows
    rows = []
    for n, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            errors.append(InputError(path, n, None, f"not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"))
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append(InputError(path, n, None, f"broken JSON: {e.msg} at column {e.colno}"))
            continue
        if not isinstance(rec, dict):
            errors.append(InputError(path, n, None, "each line must be a JSON object"))
            continue
        rows.append((n, rec))
    if errors:
        raise InputErrors(errors)
    return rows


def validate_seed_record(path: Path, line: int, rec: dict, max_chars: int) -> list[InputError]:
    errs = []
    prompt = rec.get("prompt")
    if "prompt" not in rec:
        errs.append(InputError(path, line, "prompt", "missing required field"))
    elif not isinstance(prompt, str):
        errs.append(InputError(path, line, "prompt", f"must be a string, got {type(prompt).__name__}"))
    elif not prompt.strip():
        errs.append(InputError(path, line, "prompt", "is empty"))
    elif len(prompt) > max_chars:
        errs.append(InputError(path, line, "prompt", f"is {len(prompt)} characters; the limit is {max_chars} "
                                                     "(max_seed_chars in the task file)"))
    diff = rec.get("difficulty", "medium")
    if diff is not None and diff not in DIFFICULTIES:
        errs.append(InputError(path, line, "difficulty", f"must be one of {sorted(DIFFICULTIES)}, got {diff!r}"))
    for k in _OPTIONAL_STR:
        v = rec.get(k)
        if v is not None and not isinstance(v, (str, int, float)):
            errs.append(InputError(path, line, k, f"must be a string, got {type(v).__name__}"))
    for k in ("tests", "tags"):
        v = rec.get(k)
        if v is not None and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            errs.append(InputError(path, line, k, "must be a list of strings"))
    return errs


def load_seed_file(path: str | Path, category: Category, source: str = "seed") -> pd.DataFrame:
    """Parse, validate and id the seeds of one category. Raises InputErrors listing every bad line."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, None, "seed file not found")
    records = _records(path)
    errors: list[InputError] = []
    for line, rec in records:
        errors.extend(validate_seed_record(path, line, rec, category.max_seed_chars))
    if category.verify == "code":
        for line, rec in records:
            if rec.get("tests") and not rec.get("entry_point"):
                errors.append(InputError(path, line, "entry_point", "code seeds with tests need an entry_point"))
    if errors:
        raise InputErrors(errors)
    if not records:
        raise InputError(path, None, None, "no seed rows")
    rows = []
    for line, rec in records:
        prompt = rec["prompt"].strip()
        ref = rec.get("reference")
        rows.append({
            "seed_id": seed_id(category.name, prompt, source),
            "category": category.name,
            "prompt": prompt,
            "difficulty": rec.get("difficulty") or "medium",
            "reference": None if ref is None else str(ref),
            "tests": json.dumps(rec.get("tests") or []),
            "entry_point": rec.get("entry_point"),
            "reference_response": rec.get("reference_response"),
            "tags": json.dumps(rec.get("tags") or []),
            "source": source,
            "source_file": str(path),
            "source_line": line,
        })
    df = pd.DataFrame(rows, columns=SEED_COLUMNS)
    return df.drop_duplicates("seed_id", keep="first").reset_index(drop=True)


def validate_seed_frame(df: pd.DataFrame, category: str) -> pd.DataFrame:
    """Pandera validation of the seed table (the schema lives in checks.schemas)."""
    from checks.schemas import validate_table

    return validate_table("seed_prompts", df, category)


def production_rows(store: DuckDBStore, category: str) -> pd.DataFrame:
    """Seeds made from production failures of this category (source=production); empty when there are none."""
    from distill_assets.production.intake import production_seed_rows

    return production_seed_rows(store, category)


@dg.asset(
    partitions_def=CATEGORY,
    group_name="seeds",
    kinds={"duckdb", "pandas"},
    code_version="seeds-v1",
    metadata={"partition_expr": "category"},
)
def seed_prompts(context: dg.AssetExecutionContext, store: DuckDBStore) -> dg.Output[pd.DataFrame]:
    """Seed prompts of one category (task file `seeds`, plus production failures routed to it), validated
    by pandera; `seed_id` is a content hash. The held-out `eval` file is never read here."""
    category = load_tasks().category(context.partition_key)
    df = load_seed_file(category.seeds, category)
    prod = production_rows(store, category.name)
    if not prod.empty:
        df = pd.concat([df, prod[SEED_COLUMNS]], ignore_index=True).drop_duplicates("seed_id")
    df = validate_seed_frame(df, category.name)
    version = frame_version(df, ["seed_id", "prompt", "reference", "tests", "difficulty"])
    if not prod.empty:
        from distill_assets.production.intake import mark_in_training

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
