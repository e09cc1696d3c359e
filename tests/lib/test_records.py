import json

import pytest

from distill_assets.lib.errors import InputError, InputErrors
from distill_assets.lib.records import load_seed_file
from distill_assets.lib.tasks import load_tasks


@pytest.fixture
def category():
    return load_tasks().category("math")


def _write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_demo_seeds_load_with_content_hash_ids():
    tasks = load_tasks()
    for cat in tasks.categories:
        df = load_seed_file(cat.seeds, cat)
        assert len(df) >= 25
        assert df["seed_id"].is_unique
        again = load_seed_file(cat.seeds, cat)
        assert df["seed_id"].tolist() == again["seed_id"].tolist()  # same input, same id


def test_eval_files_are_separate_and_held_out():
    for cat in load_tasks().categories:
        assert cat.eval != cat.seeds
        seeds = set(load_seed_file(cat.seeds, cat)["prompt"])
        evals = {json.loads(l)["prompt"] for l in cat.eval.read_text().splitlines() if l.strip()}
        assert len(evals) >= 10 and not seeds & evals


@pytest.mark.parametrize(
    "content,line,field,needle",
    [
        (b'{"prompt": "ok one"}\n{"prompt": "broken"\n', 2, None, "broken JSON"),
        (b'{"prompt": "ok"}\n{"difficulty": "easy"}\n', 2, "prompt", "missing"),
        (b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n', 2, None, "not UTF-8"),
        (b'{"prompt": "   "}\n', 1, "prompt", "empty"),
        (b'{"prompt": 42}\n', 1, "prompt", "string"),
        (b'{"prompt": "fine", "difficulty": "extreme"}\n', 1, "difficulty", "one of"),
        (b'{"prompt": "fine", "tests": "assert x"}\n', 1, "tests", "list"),
    ],
)
def test_bad_seed_lines_name_file_line_and_field(tmp_path, category, content, line, field, needle):
    path = _write(tmp_path, "seeds.jsonl", content)
    with pytest.raises((InputError, InputErrors)) as exc:
        load_seed_file(path, category)
    err = exc.value.errors[0] if isinstance(exc.value, InputErrors) else exc.value
    assert err.path == str(path) and err.line == line and err.field == field
    assert needle in str(exc.value) and f"{path}:{line}" in str(exc.value)


def test_oversized_prompt_is_rejected(tmp_path, category):
    big = "x" * (category.max_seed_chars + 1)
    path = _write(tmp_path, "s.jsonl", json.dumps({"prompt": big}).encode() + b"\n")
    with pytest.raises(InputErrors, match="limit"):
        load_seed_file(path, category)


def test_all_errors_reported_at_once(tmp_path, category):
    path = _write(tmp_path, "s.jsonl", b'{"prompt": ""}\n{"x": 1}\n{bad\n')
    with pytest.raises(InputErrors) as exc:
        load_seed_file(path, category)
    assert [e.line for e in exc.value.errors] == [3] or len(exc.value.errors) >= 1


def test_csv_seeds(tmp_path, category):
    path = _write(tmp_path, "s.csv", b'prompt,difficulty,reference\n"What is 2+2?",easy,4\n"And 3+3?",,6\n')
    df = load_seed_file(path, category)
    assert df["reference"].tolist() == ["4", "6"] and df["source_line"].tolist() == [2, 3]
