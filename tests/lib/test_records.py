import json

import pandas as pd
import pytest

from distill_assets.lib.errors import InputError, InputErrors
from distill_assets.lib.records import load_eval_file, load_seed_file
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
        assert len(df) >= 20
        assert df["seed_id"].is_unique
        again = load_seed_file(cat.seeds, cat)
        assert df["seed_id"].tolist() == again["seed_id"].tolist()  # same input, same id


def test_eval_files_are_separate_and_held_out():
    for cat in load_tasks().categories:
        assert cat.eval != cat.seeds
        seeds = set(load_seed_file(cat.seeds, cat)["prompt"])
        evals = set(load_eval_file(cat.eval, cat)["prompt"])  # a conversation's prompt is its last user turn
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
    # the broken JSON on line 3 does not hide the bad rows on lines 1 and 2
    assert [e.line for e in exc.value.errors] == [1, 2, 3]
    assert "broken JSON" in exc.value.errors[2].message


def test_csv_seeds(tmp_path, category):
    path = _write(tmp_path, "s.csv", b'prompt,difficulty,reference\n"What is 2+2?",easy,4\n"And 3+3?",,6\n')
    df = load_seed_file(path, category)
    assert df["reference"].tolist() == ["4", "6"] and df["source_line"].tolist() == [2, 3]


# ---------------------------------------------------------------- conversation seeds and expected tool calls

U = {"role": "user", "content": "Hi, my parcel is late."}
A = {"role": "assistant", "content": "Sorry! What is the order number?"}


def _conv(**kw) -> bytes:
    return json.dumps({"messages": [U, A, {"role": "user", "content": "It is A-1001."}], **kw}).encode() + b"\n"


def test_conversation_seed_keeps_its_turns_and_gets_an_id_from_them(tmp_path, category):
    path = _write(tmp_path, "s.jsonl", _conv() + b'{"prompt": "plain one"}\n')
    df = load_seed_file(path, category)
    conv_row, plain = df.iloc[0], df.iloc[1]
    assert conv_row["prompt"] == "It is A-1001."  # the last user turn, for the prompt-reading stages
    assert [m["role"] for m in json.loads(conv_row["messages"])] == ["user", "assistant", "user"]
    assert plain["messages"] is None or pd.isna(plain["messages"])
    other = _write(tmp_path, "o.jsonl", json.dumps({"messages": [U, {**A, "content": "Which order?"},
                                                                 {"role": "user", "content": "It is A-1001."}]})
                   .encode() + b"\n")
    assert load_seed_file(other, category)["seed_id"].iloc[0] != conv_row["seed_id"]  # every turn counts


@pytest.mark.parametrize("messages,needle", [
    ([U, A], "must end with a user turn"),
    ([{"role": "system", "content": "x"}, U], "system_prompt in the task file"),
    ([U, U], "wrong_roles_or_order"),
    ([U, {"role": "assistant", "content": 3}, U], "non_string_content"),
    ([U, {"role": "robot", "content": "x"}, U], "wrong_roles_or_order"),
    ("not a list", "messages_not_a_list"),
    ([U, {"role": "tool", "content": "{}"}], "tool_message_without_call"),
])
def test_bad_conversation_seeds_name_file_line_and_field(tmp_path, category, messages, needle):
    path = _write(tmp_path, "s.jsonl", b'{"prompt": "fine"}\n' + json.dumps({"messages": messages}).encode() + b"\n")
    with pytest.raises(InputErrors) as exc:
        load_seed_file(path, category)
    err = exc.value.errors[0]
    assert (err.path, err.line, err.field) == (str(path), 2, "messages") and needle in err.message


def test_prompt_and_messages_together_are_rejected(tmp_path, category):
    path = _write(tmp_path, "s.jsonl", json.dumps({"prompt": "x", "messages": [U]}).encode() + b"\n")
    with pytest.raises(InputErrors, match="either prompt or messages"):
        load_seed_file(path, category)


@pytest.fixture
def tools_category():
    return load_tasks().category("order_tools")


def test_expected_tool_call_becomes_the_reference(tmp_path, tools_category):
    call = {"name": "start_refund", "arguments": {"reason": "damaged", "order_id": "A-1450"}}
    path = _write(tmp_path, "s.jsonl", json.dumps({"prompt": "Refund A-1450", "expected_tool_call": call}).encode()
                  + b"\n")
    ref = load_seed_file(path, tools_category)["reference"].iloc[0]
    assert json.loads(ref) == call and ref.index('"arguments"') < ref.index('"name"')  # canonical: sorted keys


@pytest.mark.parametrize("call,needle", [
    ({"name": "cancel_order", "arguments": {"order_id": "A-1000"}}, "tool_call_unknown_function"),
    ({"name": "lookup_order", "arguments": {"order_id": "1000"}}, "tool_call_schema_violation"),
    ({"name": "lookup_order", "arguments": "{\"order_id\": \"A-1000\"}"}, "{name: string, arguments: object}"),
    ({"name": "start_refund", "arguments": {"order_id": "A-1000"}}, "'reason' is a required property"),
])
def test_bad_expected_tool_calls_name_file_line_and_field(tmp_path, tools_category, call, needle):
    path = _write(tmp_path, "s.jsonl", json.dumps({"prompt": "x", "expected_tool_call": call}).encode() + b"\n")
    with pytest.raises(InputErrors) as exc:
        load_seed_file(path, tools_category)
    err = exc.value.errors[0]
    assert (err.line, err.field) == (1, "expected_tool_call") and needle in err.message


def test_expected_tool_call_needs_a_tools_category(tmp_path, category):
    path = _write(tmp_path, "s.jsonl", json.dumps({"prompt": "x", "expected_tool_call": {
        "name": "f", "arguments": {}}}).encode() + b"\n")
    with pytest.raises(InputErrors, match="only a category with `tools`"):
        load_seed_file(path, category)


def test_tool_call_eval_items_need_the_expected_call(tmp_path, tools_category):
    path = _write(tmp_path, "e.jsonl", b'{"prompt": "Where is A-1234?"}\n')
    with pytest.raises(InputErrors) as exc:
        load_eval_file(path, tools_category)
    assert exc.value.errors[0].field == "expected_tool_call"


def test_conversation_eval_items(tools_category):
    ev = load_eval_file(tools_category.eval, tools_category)
    convs = ev[ev["messages"].notna()]
    assert len(convs) == 2 and convs["eval_id"].is_unique
    assert all(json.loads(m)[-1]["role"] == "user" for m in convs["messages"])


def test_a_seed_tool_result_names_its_call(tmp_path, tools_category):
    call = {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "lookup_order", "arguments": '{"order_id": "A-1"}'}}]}
    msgs = [U, call, {"role": "tool", "content": "{}"}]
    path = _write(tmp_path, "s.jsonl", json.dumps({"messages": msgs}).encode() + b"\n")
    with pytest.raises(InputErrors, match="tool_call_id"):
        load_seed_file(path, tools_category)
    msgs[2]["tool_call_id"] = "c1"
    path.write_bytes(json.dumps({"messages": msgs}).encode() + b"\n")
    assert load_seed_file(path, tools_category)["prompt"].iloc[0] == U["content"]
