import pytest

from distill_assets.lib.errors import InputError, InputErrors
from distill_assets.lib.tasks import load_tasks, parse_task_file


def test_demo_task_file_has_five_categories():
    t = load_tasks()
    assert t.names == ["support", "math", "code", "classify", "order_tools"]
    assert t.license == "other" and t.category("order_tools").verify == "tool_call"
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


def _tools_file(tmp_path, extra: str) -> str:
    (tmp_path / "s.jsonl").write_text('{"prompt": "x"}\n')
    (tmp_path / "e.jsonl").write_text('{"prompt": "y"}\n')
    (tmp_path / "t.yaml").write_text(
        "categories:\n  - name: tools\n    description: d\n    system_prompt: s\n    seeds: s.jsonl\n"
        "    eval: e.jsonl\n" + extra)
    return tmp_path / "t.yaml"


def test_tools_and_conversation_turns(tmp_path):
    path = _tools_file(tmp_path, "    verify: tool_call\n    conversation_turns: 3\n    tools:\n"
                                 "      - type: function\n        function:\n          name: lookup\n"
                                 "          parameters: {type: object, properties: {id: {type: string}}}\n")
    c = parse_task_file(path).category("tools")
    assert c.conversation_turns == 3 and c.tools_json()[0]["function"]["name"] == "lookup"
    assert parse_task_file(path).license == "other"  # the dataset card's default


@pytest.mark.parametrize("extra,field,needle", [
    ("    tools:\n      - type: function\n        function:\n          name: f\n"
     "          parameters: {type: object, properties: {id: {type: strng}}}\n",
     "categories.0.tools.0.function.parameters", "not a valid JSON schema"),
    ("    tools:\n      - type: function\n        function:\n          name: f\n          parameters: {type: array}\n",
     "categories.0.tools.0.function.parameters", "type: object"),
    ("    tools:\n      - type: function\n        function:\n          name: 'bad name'\n",
     "categories.0.tools.0.function.name", "pattern"),
    ("    verify: tool_call\n", "categories.0", "needs a non-empty 'tools' list"),
    ("    conversation_turns: 0\n", "categories.0.conversation_turns", "greater than or equal to 1"),
])
def test_bad_tools_name_line_and_field(tmp_path, extra, field, needle):
    with pytest.raises(InputErrors) as exc:
        parse_task_file(_tools_file(tmp_path, extra))
    err = exc.value.errors[0]
    assert err.field == field and needle in err.message and err.line is not None
