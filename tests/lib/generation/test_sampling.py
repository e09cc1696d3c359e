"""A category's sampling settings reach its answer requests; min_p goes on the wire only when set; label
categories rotate the label list per sample."""

import pytest

from distill_assets.lib.errors import InputErrors
from distill_assets.lib.generation.plan import initial_steps
from distill_assets.lib.records import load_seed_file
from distill_assets.lib.tasks import parse_task_file

HEAD = "categories:\n  - name: t\n    description: d\n    system_prompt: s\n    seeds: s.jsonl\n    eval: e.jsonl\n"


def _category(tmp_path, extra: str):
    (tmp_path / "s.jsonl").write_text('{"prompt": "Say hi"}\n{"prompt": "Say bye"}\n')
    (tmp_path / "e.jsonl").write_text('{"prompt": "Say what"}\n')
    (tmp_path / "t.yaml").write_text(HEAD + "    methods: {response: 2, evol_instruct: 1}\n" + extra)
    return parse_task_file(tmp_path / "t.yaml").categories[0]


def test_top_p_and_min_p_reach_the_answer_requests(tmp_path):
    cat = _category(tmp_path, "    temperature: 1.0\n    top_p: 1.0\n    min_p: 0.0\n")
    answers = [s.request for s in initial_steps(cat, load_seed_file(cat.seeds, cat)) if s.kind == "answer"]
    assert answers and all(r.params()["top_p"] == 1.0 and r.params()["min_p"] == 0.0 for r in answers)
    assert all(r.temperature == 1.0 for r in answers)


def test_unset_sampling_settings_leave_the_server_defaults(tmp_path):
    cat = _category(tmp_path, "")
    steps = initial_steps(cat, load_seed_file(cat.seeds, cat))
    assert steps and all("min_p" not in s.request.params() and "top_p" not in s.request.params() for s in steps)


def test_an_out_of_range_min_p_names_its_line(tmp_path):
    with pytest.raises(InputErrors) as exc:
        _category(tmp_path, "    min_p: 1.5\n")
    assert exc.value.errors[0].field == "categories.0.min_p" and exc.value.errors[0].line == 8


def test_rotated_labels_start_at_another_label_in_each_sample(tmp_path):
    (tmp_path / "s.jsonl").write_text('{"prompt": "Where is my parcel?", "reference": "b"}\n')
    (tmp_path / "e.jsonl").write_text('{"prompt": "Say what", "reference": "a"}\n')
    (tmp_path / "t.yaml").write_text(HEAD + "    verify: label\n    labels: [a, b, c]\n    label_order: rotate\n"
                                     "    samples_per_prompt: 3\n    methods: {response: {}}\n")
    cat = parse_task_file(tmp_path / "t.yaml").categories[0]
    answers = [s.request for s in initial_steps(cat, load_seed_file(cat.seeds, cat)) if s.kind == "answer"]
    lists = [r.messages[0]["content"].rsplit("The possible labels: ", 1)[1] for r in answers]
    assert len(lists) == 3 and len(set(lists)) == 3  # every label comes first once over three samples
    assert {x.split(",")[0] for x in lists} == {"a", "b", "c"}
    assert all(sorted(x.rstrip(".").split(", ")) == ["a", "b", "c"] for x in lists)
