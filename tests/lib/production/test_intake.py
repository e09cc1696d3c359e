"""Failure intake: malformed files, duplicates, size limits, drop folder, status lifecycle."""

import json

import pandas as pd
import pytest

from distill_assets.lib.production import intake, split, state
from distill_assets.lib.tasks import load_tasks


def _good(i, cat="math"):
    return {"category": cat, "input": f"What is {i} + {i}?", "bad_output": "I think 7", "expected": str(2 * i)}


def _write(path, lines: list[bytes]):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_malformed_file_keeps_good_rows_and_names_every_bad_one(store, tmp_path):
    big = json.dumps({"category": "math", "input": "x" * 1_000_000, "bad_output": "y"}).encode()
    f = _write(tmp_path / "f.jsonl", [
        json.dumps(_good(1)).encode(),
        b'{"category": "math", "input": "broken',                       # broken JSON
        b'{"category": "math", "input": "caf\xe9", "bad_output": "x"}',  # latin-1, not UTF-8
        json.dumps({"category": "math", "bad_output": "no input"}).encode(),  # missing field
        big,                                                              # 1 MB input
        json.dumps(_good(1)).encode(),                                    # duplicate of line 1
        json.dumps({"category": "cooking", "input": "a", "bad_output": "b"}).encode(),  # unknown category
        b"[1, 2, 3]",                                                     # not an object
        json.dumps({"category": "math", "input": 42, "bad_output": "b"}).encode(),  # wrong type
        json.dumps(_good(2)).encode(),
    ])
    r = intake.ingest_file(store, f)
    assert r.inserted == 2 and r.duplicates == 1
    rej = state.list_rejects(store)
    got = {(int(x.line), None if pd.isna(x.field) else x.field, x.reason) for x in rej.itertuples()}
    assert {(2, None, "broken_json"), (3, None, "not_utf8"), (4, "input", "missing"), (5, "input", "too_large"),
            (5, "input", "too_long"), (6, "failure_id", "duplicate"), (7, "category", "unknown_category"),
            (8, None, "not_an_object"), (9, "input", "not_a_string")} <= got
    assert set(rej["source"]) == {str(f.resolve())}
    assert rej["raw"].str.len().max() < 5000  # the 1 MB line is kept as a preview; the file itself is kept
    # nothing half-ingested: a second ingest of the same file is skipped whole
    assert intake.ingest_file(store, f).skipped_file
    assert len(state.list_failures(store)) == 2


def test_same_failure_twice_is_stored_once_and_content_cannot_set_state(store):
    rec = {**_good(3), "status": "resolved", "failure_id": "f_evil", "split": "train",
           "heldout_failure_fraction": 0, "category ": "code"}
    r1 = intake.add_failures(store, [rec])
    r2 = intake.add_failures(store, [dict(rec, expected="other")])  # same (category, input, bad_output)
    assert r1.inserted == 1 and r2.inserted == 0 and r2.duplicates == 1
    df = state.list_failures(store)
    assert len(df) == 1
    assert df.iloc[0]["failure_id"] == intake.failure_id("math", rec["input"], rec["bad_output"])
    assert df.iloc[0]["status"] in ("pending", "held_out")


def test_sql_injection_is_just_text(store):
    evil = "'); DROP TABLE production_failures; --"
    r = intake.add_failures(store, [{"category": "math", "input": evil, "bad_output": evil}])
    assert r.inserted == 1
    assert state.list_failures(store).iloc[0]["input"] == evil


def test_heldout_split_is_deterministic_and_near_the_fraction(store):
    recs = [_good(i) for i in range(400)]
    intake.add_failures(store, recs)
    df = state.list_failures(store)
    frac = load_tasks().category("math").heldout_failure_fraction
    share = (df["split"] == "heldout").mean()
    assert abs(share - frac) < 0.07
    assert ((df["split"] == "heldout") == (df["status"] == "held_out")).all()
    assert all(split.is_held_out(split.split_key(c, i), frac) == (s == "heldout")
               for c, i, s in zip(df["category"], df["input"], df["split"]))
    # never a seed, always an eval row
    seeds = state.production_seed_rows(store, "math")
    held = df[df["split"] == "heldout"]
    assert set(seeds["prompt"]).isdisjoint(set(held["input"]))
    assert len(seeds) + len(held) == 400
    assert (seeds["source"] == "production").all() and seeds["seed_id"].is_unique


def test_status_lifecycle(store):
    intake.add_failures(store, [_good(i) for i in range(30)])
    df = state.list_failures(store)
    pend = df[df["status"] == "pending"]["failure_id"].tolist()
    held = df[df["status"] == "held_out"]["failure_id"].tolist()
    assert pend and held
    assert state.mark_in_training(store, pd.DataFrame({"failure_id": pend + held})) == len(pend)
    assert state.set_status(store, held, "in_training") == 0  # held_out never goes to training
    assert state.set_status(store, pend[:2] + held[:1], "resolved", resolved_by="v1") == 3
    assert state.set_status(store, pend[:1], "pending") == 0  # no way back
    by = state.list_failures(store).set_index("failure_id")
    assert by.loc[pend[0], "status"] == "resolved" and by.loc[pend[0], "resolved_by"] == "v1"
    assert set(state.list_failures(store, status="resolved")["failure_id"]) == set(pend[:2] + held[:1])
    with pytest.raises(ValueError):
        state.list_failures(store, status="bogus")


def test_drop_folder_moves_files_atomically_and_never_loses_one(store, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _write(inbox / "a.jsonl", [json.dumps(_good(i)).encode() for i in range(3)])
    _write(inbox / "b.jsonl", [b"{broken"])
    (inbox / "c.jsonl.tmp").write_text(json.dumps(_good(9)))  # still being written: ignored
    reports = intake.ingest_drop_folder(store, inbox)
    assert [r.inserted for r in reports] == [3, 0]
    assert sorted(p.name for p in (inbox / "processed").iterdir()) == ["a.jsonl", "b.jsonl"]
    assert sorted(p.name for p in inbox.iterdir() if p.is_file()) == ["c.jsonl.tmp"]
    # the same name again does not overwrite the processed copy
    _write(inbox / "a.jsonl", [json.dumps(_good(7)).encode()])
    intake.ingest_drop_folder(store, inbox)
    assert len(list((inbox / "processed").iterdir())) == 3
    assert len(state.list_failures(store)) == 4
    rej = state.list_rejects(store)
    assert rej.iloc[0]["source"].endswith("processed/b.jsonl") and rej.iloc[0]["reason"] == "broken_json"


def test_csv_intake(store, tmp_path):
    f = tmp_path / "f.csv"
    f.write_bytes(b"category,input,bad_output,expected\nmath,What is 2+2?,5,4\nmath,,x,\n")
    r = intake.ingest_file(store, f, source="cli")
    assert r.inserted == 1 and r.rejected == 1
    assert state.list_failures(store).iloc[0]["source"].startswith("cli:")


def test_same_prompt_with_other_bad_outputs_stays_on_one_side_of_the_split(store):
    """Two failures with one prompt must never be split into a seed and an eval row (contamination)."""
    frac = load_tasks().category("support").heldout_failure_fraction
    prompts = [f"Where is my order number {i}?" for i in range(60)]
    intake.add_failures(store, [{"category": "support", "input": p, "bad_output": "first answer"} for p in prompts])
    intake.add_failures(store, [{"category": "support", "input": p, "bad_output": f"other answer {k}"}
                                for k in range(3) for p in prompts])
    df = state.list_failures(store)
    assert len(df) == 4 * len(prompts)
    sides = df.groupby("input")["split"].nunique()
    assert (sides == 1).all()
    held = set(df.loc[df["split"] == "heldout", "input"])
    assert held == {p for p in prompts if split.is_held_out(split.split_key("support", p), frac)}
    assert 0 < len(held) < len(prompts)
    assert set(state.production_seed_rows(store, "support")["prompt"]).isdisjoint(held)


def test_a_stored_prompt_keeps_its_split_for_later_failures(store):
    """Rows stored under an older rule (or another fraction) decide the split of new failures with their prompt."""
    intake.add_failures(store, [{"category": "support", "input": "Can I return a gift?", "bad_output": "no"}])
    row = state.list_failures(store).iloc[0]
    flipped = "train" if row["split"] == "heldout" else "heldout"
    store.execute("UPDATE production_failures SET split = ?, status = ? WHERE failure_id = ?",
                  [flipped, "held_out" if flipped == "heldout" else "pending", row["failure_id"]])
    r = intake.add_failures(store, [{"category": "support", "input": "Can I return a gift?", "bad_output": "maybe"}])
    assert r.inserted == 1 and r.held_out == (1 if flipped == "heldout" else 0)
    df = state.list_failures(store)
    assert set(df["split"]) == {flipped}
    assert set(df["status"]) == {"held_out" if flipped == "heldout" else "pending"}


def test_templated_failures_are_split_by_their_hash_not_pulled_to_one_side_by_the_template(store):
    """Classify failures in the category's template share "classify the intent of this message <opening>" with
    eval items and seeds; that is no overlap, so each failure's own hash decides its side."""
    frac = load_tasks().category("classify").heldout_failure_fraction
    openings = ["Is there", "Can you", "Does the", "Your app", "How do I", "I'd like", "Do you", "My account"]
    prompts = [f"Classify the intent of this message: {openings[i % len(openings)]} order {5000 + i} "
               f"item {chr(65 + i % 26)}{i} question {i}?" for i in range(40)]
    intake.add_failures(store, [{"category": "classify", "input": p, "bad_output": "other", "expected": "billing"}
                                for p in prompts])
    df = state.list_failures(store, category="classify")
    held = set(df.loc[df["split"] == "heldout", "input"])
    assert held == {p for p in prompts if split.is_held_out(split.split_key("classify", p), frac)}
    assert 0 < len(held) < len(prompts)
