import json

import pandas as pd
import pytest

from distill_assets.lib.errors import InputError, InputErrors
from distill_assets.lib.eval_set import build_eval_frame, extra_eval_rows
from distill_assets.lib.ledger import open_store
from distill_assets.lib.records import load_eval_file
from distill_assets.lib.tasks import load_tasks
from resources.clock import utcnow


def test_demo_eval_files_load_and_validate():
    for c in load_tasks().categories:
        df = build_eval_frame(c, None)
        assert len(df) >= 10 and df["eval_id"].is_unique and set(df["source"]) == {"eval"}
        assert (df["category"] == c.name).all()
        assert df["tests"].map(lambda t: isinstance(json.loads(t), list)).all()


def test_eval_ids_are_content_hashes():
    c = load_tasks().category("math")
    assert load_eval_file(c.eval, c)["eval_id"].tolist() == load_eval_file(c.eval, c)["eval_id"].tolist()


@pytest.mark.parametrize("line,field", [
    ('{"prompt": 5, "difficulty": "easy", "reference": "3"}', "prompt"),
    ('{"prompt": "How much?", "difficulty": "trivial", "reference": "3"}', "difficulty"),
    ('{"prompt": "How much?", "difficulty": "easy"}', "reference"),   # math needs a reference
    ('{"prompt": "How much?", "reference": "3", "tests": "assert"}', "tests"),
])
def test_bad_lines_name_file_line_and_field(tmp_path, line, field):
    c = load_tasks().category("math")
    p = tmp_path / "eval.jsonl"
    p.write_text('{"prompt": "What is 2 + 2?", "difficulty": "easy", "reference": "4"}\n' + line + "\n")
    with pytest.raises(InputErrors) as e:
        load_eval_file(p, c)
    [err] = e.value.errors
    assert (err.path, err.line, err.field) == (str(p), 2, field)


def test_broken_json_and_duplicates_and_empty_file(tmp_path):
    c = load_tasks().category("math")
    p = tmp_path / "eval.jsonl"
    p.write_text('{"prompt": "What is 2 + 2?", "reference": "4"}\n{"prompt": \n')
    with pytest.raises(InputErrors) as e:
        load_eval_file(p, c)
    assert e.value.errors[0].line == 2
    p.write_text('{"prompt": "What is 2 + 2?", "reference": "4"}\n{"prompt": "What is 2 + 2? ", "reference": "4"}\n')
    with pytest.raises(InputErrors, match="repeats the eval item on line 1"):
        load_eval_file(p, c)
    p.write_text("\n")
    with pytest.raises(InputError, match="no eval rows"):
        load_eval_file(p, c)


def test_held_out_production_failures_join_the_eval_set(tmp_path):
    store = open_store(str(tmp_path / "d.duckdb"))
    assert extra_eval_rows(store, "support").empty
    store.insert_df("production_failures", pd.DataFrame([
        {"failure_id": "f1", "category": "support", "input": "My gift card shows a zero balance.",
         "bad_output": "?", "expected": "Send us the card number.", "reported_at": utcnow(), "status": "held_out"},
        {"failure_id": "f2", "category": "support", "input": "Used for training", "bad_output": "?",
         "expected": None, "reported_at": utcnow(), "status": "in_training"},
        {"failure_id": "f3", "category": "math", "input": "Other category", "bad_output": "?",
         "expected": None, "reported_at": utcnow(), "status": "held_out"},
    ]))
    extra = extra_eval_rows(store, "support")
    assert extra["prompt"].tolist() == ["My gift card shows a zero balance."]
    df = build_eval_frame(load_tasks().category("support"), store)
    assert df["source"].value_counts().to_dict() == {"eval": 14, "production_heldout": 1}


def test_held_out_math_failures_carry_their_gold_answer(tmp_path):
    """`expected` is the gold reference where the category checks answers, so eval_report scores a correct
    "... the answer is: 42" as a pass rather than by its ROUGE-L against "42"."""
    store = open_store(str(tmp_path / "d.duckdb"))
    store.insert_df("production_failures", pd.DataFrame([
        {"failure_id": "f1", "category": "math", "input": "What is 6 times 7?", "bad_output": "41",
         "expected": "42", "reported_at": utcnow(), "status": "held_out"}]))
    assert extra_eval_rows(store, "math", "math")["reference"].tolist() == ["42"]
    assert extra_eval_rows(store, "math", "none")["reference"].tolist() == [None]
    df = build_eval_frame(load_tasks().category("math"), store)
    assert df.loc[df["source"] == "production_heldout", "reference"].tolist() == ["42"]
