import json

import numpy as np
import pandas as pd
import pytest

from checks.tables import schema_check_result
from distill_assets.lib.schemas import SCHEMAS, failure_cases, validate_table
from distill_assets.lib.stages import annotate
from tests.checks.helpers import clean_frame, eval_frame, seeds

TABLES = ["seed_prompts", "raw_generations", "quality_filtered", "deduplicated", "judged", "verified", "balanced",
          "decontaminated", "clean_dataset", "eval_set"]


def raw_frame(n: int = 4) -> pd.DataFrame:
    clean = clean_frame(n=n)
    msgs = [json.loads(m) for m in clean["messages"]]
    return pd.DataFrame({
        "generation_id": clean["generation_id"], "example_id": clean["example_id"], "seed_id": clean["seed_id"],
        "parent_ids": [json.dumps([s]) for s in clean["seed_id"]], "category": "support", "method": "response",
        "messages": clean["messages"], "system_prompt": [m[0]["content"] for m in msgs],
        "instruction": [m[1]["content"] for m in msgs], "response": [m[2]["content"] for m in msgs],
        "teacher_model": "smollm2", "params": json.dumps({"temperature": 0.7}), "call_key": "k",
        "sample_index": np.arange(n), "prompt_tokens": 10, "completion_tokens": [5, None, 7, 8][:n],
        "latency_s": 0.2, "finish_reason": "stop", "difficulty": "easy", "reference": None, "tests": "[]",
        "entry_point": None, "source": "seed", "evol_chain": "[]", "created_at": pd.Timestamp.now(tz="UTC"),
    })


def stage_frame() -> pd.DataFrame:
    raw = raw_frame()
    return annotate(raw, [True, True, False, True], ["", "", "too_short", ""], [{}, {}, {"tokens": 2}, {}])


def frame(table: str) -> pd.DataFrame:
    return {"seed_prompts": lambda: seeds(), "raw_generations": raw_frame, "clean_dataset": clean_frame,
            "eval_set": eval_frame}.get(table, stage_frame)()


def test_every_table_asset_has_a_schema():
    assert set(TABLES) == set(SCHEMAS)


@pytest.mark.parametrize("table", TABLES)
def test_valid_frames_pass(table):
    df = frame(table)
    validate_table(table, df, "support")
    r = schema_check_result(table, df, "support")
    assert r.passed, r.metadata.get("failure_cases")


@pytest.mark.parametrize("table,column,bad", [
    ("raw_generations", "sample_index", lambda s: s.astype(str)),          # str where an int belongs
    ("raw_generations", "latency_s", lambda s: s.astype(str)),
    ("raw_generations", "params", lambda s: s.map(lambda v: json.loads(v))),  # nested object, not JSON text
    ("quality_filtered", "keep", lambda s: s.astype(int)),
    ("clean_dataset", "split", lambda s: s.replace("validation", "valid")),
    ("clean_dataset", "messages", lambda s: s.map(lambda v: json.dumps(json.loads(v)[:2]))),  # no assistant turn
    ("seed_prompts", "source_line", lambda s: s.astype(str)),
    ("seed_prompts", "tests", lambda s: s.map(lambda v: "assert f(1) == 2")),
    ("eval_set", "eval_id", lambda s: s.iloc[[0] * len(s)].reset_index(drop=True)),  # not unique
])
def test_wrong_column_type_or_value_fails(table, column, bad):
    df = frame(table)
    df[column] = bad(df[column])
    r = schema_check_result(table, df, "support")
    assert not r.passed
    fc = failure_cases(table, df, "support")
    assert column in set(fc["column"]), fc


def test_missing_column_and_wrong_partition_fail():
    df = clean_frame().drop(columns=["split"])
    assert "split" in failure_cases("clean_dataset", df).to_string()
    assert not schema_check_result("clean_dataset", clean_frame(), "math").passed


def test_kept_rows_must_be_trainable_but_quarantined_rows_may_be_malformed():
    df = stage_frame()
    df.loc[2, "messages"] = "{not json"
    assert schema_check_result("quality_filtered", df, "support").passed  # row 2 is dropped
    df.loc[0, "messages"] = "{not json"
    assert not schema_check_result("quality_filtered", df, "support").passed


def test_extra_columns_are_allowed():
    df = clean_frame()
    df["stage_specific"] = 1
    assert schema_check_result("clean_dataset", df, "support").passed
