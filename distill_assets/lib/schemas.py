"""Pandera schemas of every table asset: the common core each one must carry (docs/CONVENTIONS.md).

Stages add their own columns, so schemas are not strict about extra columns. Value types are checked per
element rather than by pandas dtype: DuckDB hands strings back as `object` or `string` depending on the
version, and a nullable integer column can come back as float with NaN; a column of the wrong kind (a number
where a string belongs, a string where an integer belongs, a JSON column that does not parse) still fails.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaError, SchemaErrors

from distill_assets.lib.conversation import conversation_problem

METHODS = ["response", "cot", "self_instruct", "evol_instruct", "task_specific"]
DIFFICULTIES = ["easy", "medium", "hard"]
EXAMPLE_SOURCES = ["seed", "synthetic", "production"]
SEED_SOURCES = ["seed", "synthetic", "production"]
EVAL_SOURCES = ["eval", "production_heldout"]
VERDICTS = ["kept", "dropped", "quarantined"]
SPLITS = ["train", "validation"]


# ---------------------------------------------------------------- element checks

def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _json_of(kind: type | tuple[type, ...], item: Callable[[Any], bool] | None = None) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        if not isinstance(v, str):
            return False
        try:
            obj = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            return False
        if not isinstance(obj, kind):
            return False
        return item is None or all(item(x) for x in obj)
    return ok


def _valid_messages(v: Any) -> bool:
    """A JSON chat list: system?, then user/assistant turns (tool calls and tool results allowed), ending with
    the assistant (lib/conversation.py)."""
    if not _json_of(list)(v):
        return False
    return conversation_problem(json.loads(v)) is None


def _seed_conversation(v: Any) -> bool:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return True
    return _json_of(list)(v) and conversation_problem(json.loads(v), ends_with=("user", "tool"), allow_system=False) is None


def _integral(s: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(s):
        return False
    if pd.api.types.is_integer_dtype(s):
        return True
    if pd.api.types.is_float_dtype(s):  # nullable ints read back with NaN
        nn = s.dropna()
        return bool((nn == nn.round()).all())
    return False


def _timestamp(s: pd.Series) -> bool:
    if pd.api.types.is_datetime64_any_dtype(s):
        return True
    nn = s.dropna()
    if not nn.map(_is_str).all():
        return False
    return bool(pd.to_datetime(nn, errors="coerce", utc=True, format="mixed").notna().all())


def string(nullable: bool = False, nonempty: bool = False, isin: list[str] | None = None,
           unique: bool = False) -> pa.Column:
    checks = [pa.Check(_is_str, element_wise=True, error="must be a string")]
    if nonempty:
        checks.append(pa.Check(lambda v: bool(v.strip()), element_wise=True, error="must not be blank"))
    if isin is not None:
        checks.append(pa.Check.isin(isin))
    return pa.Column(checks=checks, nullable=nullable, unique=unique)


def json_str(kind: type | tuple[type, ...], item: Callable[[Any], bool] | None = None, nullable: bool = False,
             what: str = "") -> pa.Column:
    return pa.Column(checks=pa.Check(_json_of(kind, item), element_wise=True,
                                     error=f"must be a JSON string of {what or kind}"), nullable=nullable)


def integer(nullable: bool = False, ge: int | None = None) -> pa.Column:
    checks = [pa.Check(_integral, error="must be an integer column")]
    if ge is not None:
        checks.append(pa.Check.ge(ge))
    return pa.Column(checks=checks, nullable=nullable)


def number(nullable: bool = False, ge: float | None = None) -> pa.Column:
    checks = [pa.Check(lambda s: pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s),
                       error="must be a numeric column")]
    if ge is not None:
        checks.append(pa.Check.ge(ge))
    return pa.Column(checks=checks, nullable=nullable)


def boolean() -> pa.Column:
    return pa.Column(checks=pa.Check(lambda s: pd.api.types.is_bool_dtype(s), error="must be a boolean column"))


def timestamp(nullable: bool = False) -> pa.Column:
    return pa.Column(checks=pa.Check(_timestamp, error="must be timestamps (or ISO-8601 strings)"),
                     nullable=nullable)


# ---------------------------------------------------------------- table schemas

def _optional_conversation() -> pa.Column:
    # absent in tables written before conversations existed; null for a plain prompt
    return pa.Column(checks=pa.Check(_seed_conversation, element_wise=True,
                                     error="must be null or a JSON chat list ending with a user turn"),
                     nullable=True, required=False)


def _seed_columns() -> dict[str, pa.Column]:
    return {
        "seed_id": string(nonempty=True, unique=True),
        "category": string(nonempty=True),
        "prompt": string(nonempty=True),
        "difficulty": string(isin=DIFFICULTIES),
        "reference": string(nullable=True),
        "tests": json_str(list, _is_str, what="a list of assert lines"),
        "entry_point": string(nullable=True),
        "reference_response": string(nullable=True),
        "tags": json_str(list, _is_str, what="a list of strings"),
        "source": string(isin=SEED_SOURCES),
        "source_file": string(nullable=True),
        "source_line": integer(nullable=True, ge=0),
        "messages": _optional_conversation(),
    }


def _raw_columns() -> dict[str, pa.Column]:
    return {
        "generation_id": string(nonempty=True, unique=True),
        "example_id": string(nonempty=True, unique=True),
        "seed_id": string(nullable=True),
        "parent_ids": json_str(list, _is_str, what="a list of ids"),
        "category": string(nonempty=True),
        "method": string(isin=METHODS),
        # malformed rows are the quality stage's to quarantine, so raw rows need only the right kinds here
        "messages": string(nullable=True),
        "system_prompt": string(nullable=True),
        "instruction": string(nullable=True),
        "response": string(nullable=True),
        "teacher_model": string(),
        "params": json_str(dict, what="an object"),
        "call_key": string(nullable=True),
        "sample_index": integer(ge=0),
        "prompt_tokens": integer(nullable=True, ge=0),
        "completion_tokens": integer(nullable=True, ge=0),
        "latency_s": number(nullable=True, ge=0),
        "finish_reason": string(nullable=True),
        "difficulty": string(isin=DIFFICULTIES),
        "reference": string(nullable=True),
        "tests": json_str(list, _is_str, what="a list of assert lines"),
        "entry_point": string(nullable=True),
        "source": string(isin=EXAMPLE_SOURCES),
        "evol_chain": json_str((list, dict), what="a list or object"),
        "created_at": timestamp(),
        # every teacher call of a multi-turn row: [{turn, role, call_key}]
        "turn_calls": pa.Column(checks=pa.Check(_json_of(list), element_wise=True, error="must be a JSON list"),
                                nullable=True, required=False),
    }


def _stage_columns() -> dict[str, pa.Column]:
    cols = _raw_columns()
    cols.update({
        "keep": boolean(),
        "verdict": string(isin=VERDICTS),
        "reason": string(nonempty=True),
        "evidence": json_str((dict, list), what="an object or list"),
    })
    return cols


def _verdict_consistent(df: pd.DataFrame) -> pd.Series:
    return df["keep"].astype(bool) == (df["verdict"] == "kept")


def _kept_rows_trainable(df: pd.DataFrame) -> pd.Series:
    """A kept row is training material: well-formed messages and a non-empty instruction and response."""
    k = df["keep"].astype(bool)
    ok = (df["messages"].map(_valid_messages) & df["instruction"].map(lambda v: _is_str(v) and bool(v.strip()))
          & df["response"].map(_is_str))
    return ~k | ok


def _clean_columns() -> dict[str, pa.Column]:
    return {
        "example_id": string(nonempty=True, unique=True),
        "category": string(nonempty=True),
        "messages": pa.Column(checks=pa.Check(_valid_messages, element_wise=True,
                                              error="must be a JSON chat list: system?, user/assistant turns, "
                                                    "ending with the assistant")),
        "split": string(isin=SPLITS),
        "seed_id": string(nullable=True),
        "method": string(isin=METHODS),
        "difficulty": string(isin=DIFFICULTIES),
        "source": string(isin=EXAMPLE_SOURCES),
        "generation_id": string(nonempty=True),
        "tools": pa.Column(checks=pa.Check(_json_of(list), element_wise=True, error="must be a JSON list"),
                           nullable=True, required=False),
    }


def _eval_columns() -> dict[str, pa.Column]:
    return {
        "eval_id": string(nonempty=True, unique=True),
        "category": string(nonempty=True),
        "prompt": string(nonempty=True),
        "difficulty": string(isin=DIFFICULTIES),
        "reference": string(nullable=True),
        "tests": json_str(list, _is_str, what="a list of assert lines"),
        "entry_point": string(nullable=True),
        "reference_response": string(nullable=True),
        "source": string(isin=EVAL_SOURCES),
        "messages": _optional_conversation(),
    }


STAGE_TABLES = ["quality_filtered", "deduplicated", "judged", "verified", "balanced", "decontaminated"]


def _build() -> dict[str, pa.DataFrameSchema]:
    out = {
        "seed_prompts": pa.DataFrameSchema(_seed_columns(), name="seed_prompts"),
        "raw_generations": pa.DataFrameSchema(_raw_columns(), name="raw_generations"),
        "clean_dataset": pa.DataFrameSchema(_clean_columns(), name="clean_dataset"),
        "eval_set": pa.DataFrameSchema(_eval_columns(), name="eval_set"),
    }
    for t in STAGE_TABLES:
        out[t] = pa.DataFrameSchema(
            _stage_columns(), name=t,
            checks=[pa.Check(_verdict_consistent, error="keep must be true exactly when verdict is 'kept'"),
                    pa.Check(_kept_rows_trainable, error="kept rows need well-formed messages, instruction and "
                                                         "response")],
        )
    return out


SCHEMAS: dict[str, pa.DataFrameSchema] = _build()
TABLE_ASSETS = list(SCHEMAS)


def schema_for(table: str, category: str | None = None) -> pa.DataFrameSchema:
    """The table's schema; with `category`, every row's `category` must equal it (the partition key)."""
    try:
        schema = SCHEMAS[table]
    except KeyError:
        raise KeyError(f"no schema for table {table!r}; known: {TABLE_ASSETS}") from None
    if category is None:
        return schema
    return schema.update_column("category", checks=[
        pa.Check(_is_str, element_wise=True, error="must be a string"),
        pa.Check.eq(category, error=f"must equal the partition key {category!r}"),
    ])


def validate_table(table: str, df: pd.DataFrame, category: str | None = None) -> pd.DataFrame:
    """Validate `df` against the table's schema, collecting every failure; raises pandera SchemaErrors."""
    return schema_for(table, category).validate(df, lazy=True)


def failure_cases(table: str, df: pd.DataFrame, category: str | None = None) -> pd.DataFrame:
    """Every failure as rows (column, check, failure_case, index); empty when the frame is valid."""
    try:
        validate_table(table, df, category)
    except SchemaErrors as e:
        fc = e.failure_cases.copy()
    except SchemaError as e:  # not raised with lazy=True, kept for pandera versions that do
        fc = pd.DataFrame([{"column": getattr(e, "column_name", None), "check": str(e.check),
                            "failure_case": str(e), "index": None}])
    else:
        return pd.DataFrame(columns=["column", "check", "failure_case", "index"])
    keep = [c for c in ["column", "check", "failure_case", "index"] if c in fc.columns]
    return fc[keep].astype(str).reset_index(drop=True)
