"""Evaluation of a tool-call category: items carry the tools, the teacher's tool calls become the plain-text
lines the students are asked to write, and both are scored by the same tool-call accuracy."""

import json

from distill_assets.lib.conversation import TOOLS_HEADER
from distill_assets.lib.evaluation.generate import generate_hf, generate_teacher
from distill_assets.lib.evaluation.metrics import score_generations
from distill_assets.lib.evaluation.variants import build_items
from distill_assets.lib.records import load_eval_file
from distill_assets.lib.tasks import load_tasks
from resources.llm import ChatResult


def _items():
    cat = load_tasks().category("order_tools")
    ev = load_eval_file(cat.eval, cat)
    return cat, ev, build_items(ev, {cat.name: cat})


def test_items_carry_tools_and_the_plain_text_view():
    cat, ev, items = _items()
    assert all(it["tools"] == cat.tools_json() for it in items)
    conv_item = next(it for it, m in zip(items, ev["messages"]) if isinstance(m, str))
    assert [m["role"] for m in conv_item["messages"]] == ["system", "user", "assistant", "user"]
    assert TOOLS_HEADER in conv_item["student_messages"][0]["content"]


def test_teacher_calls_are_scored_like_the_students_text():
    cat, ev, items = _items()
    expected = {r.eval_id: json.loads(r.reference) for r in ev.itertuples()}

    def complete(reqs, category):
        out = []
        for r in reqs:
            assert r.tools == cat.tools_json()
            e = expected[r.tag]
            call = {"id": "c", "type": "function", "function": {"name": e["name"], "arguments": json.dumps(
                e["arguments"] if r.tag != ev["eval_id"].iloc[0] else {**e["arguments"], "order_id": "A-0000"})}}
            out.append(ChatResult("k", "t", "ok", "", "tool_calls", 1, 1, tool_calls=[call], tag=r.tag))
        return out

    gens = generate_teacher(complete, items, 32)
    assert gens["response"].str.startswith('{"tool_call": ').all()
    scored = score_generations(ev, gens, {cat.name: cat}).set_index("example_id")
    assert (scored["metric"] == "tool_call_accuracy").all()
    first = ev["eval_id"].iloc[0]
    assert scored.loc[first, "score"] == 0.0 and json.loads(scored.loc[first, "task_detail"])["reason"] == \
        "tool_call_mismatch"
    assert scored.drop(index=first)["score"].eq(1.0).all()


def test_a_student_without_tool_support_is_asked_in_the_plain_text_form(tmp_path_factory):
    from tests.lib.training.tiny_model import session_dirs

    _, _, items = _items()
    gens, info = generate_hf(str(session_dirs(tmp_path_factory)["base"]), items[:2], "base_student", 4,
                             threads=2, batch_size=2)
    assert gens["error"].isna().all() and (gens["prompt_tokens"] > 150).all()  # the function list is in the prompt
