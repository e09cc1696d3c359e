import pytest

from distill_assets.lib.errors import InputError, InputErrors
from distill_assets.lib.tasks import load_tasks, parse_task_file


def test_demo_task_file_has_four_categories():
    t = load_tasks()
    assert t.names == ["support", "math", "code", "classify"]
    assert t.category("math").verify == "math"
    assert t.category("classify").labels


def test_second_task_file_with_other_categories(tmp_path):
    (tmp_path / "s.jsonl").write_text('{"prompt": "Translate: hello"}\n')
    (tmp_path / "e.jsonl").write_text('{"prompt": "Translate: goodbye"}\n')
    (tmp_path / "t.yaml").write_text(
        "categories:\n"
        "  - name: translate\n    description: d\n    system_prompt: s\n    seeds: s.jsonl\n    eval: e.jsonl\n"
        "  - name: summarize\n    description: d\n    system_prompt: s\n    seeds: s.jsonl\n    eval: e.jsonl\n"
    )
    t = parse_task_file(tmp_path / "t.yaml")
    assert t.names == ["translate", "summarize"]
    assert t.category("translate").filters.near_dup_threshold == 0.9  # the documented defaults


def test_task_file_errors_name_line_and_field(tmp_path):
    (tmp_path / "s.jsonl").write_text("{}\n")
    (tmp_path / "t.yaml").write_text(
        "categories:\n  - name: ok\n    description: d\n    system_prompt: s\n    seeds: s.jsonl\n"
        "    eval: e.jsonl\n    temperature: hot\n"
    )
    with pytest.raises(InputErrors) as exc:
        parse_task_file(tmp_path / "t.yaml")
    err = exc.value.errors[0]
    assert err.field == "categories.0.temperature" and err.line == 7


def test_missing_eval_file(tmp_path):
    (tmp_path / "s.jsonl").write_text("{}\n")
    (tmp_path / "t.yaml").write_text(
        "categories:\n  - name: ok\n    description: d\n    system_prompt: s\n    seeds: s.jsonl\n    eval: nope.jsonl\n"
    )
    with pytest.raises(InputError, match="file not found"):
        parse_task_file(tmp_path / "t.yaml")
