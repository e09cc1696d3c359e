"""Teacher-written tests for code without any: the writer sees the task and signature, never the body; the
solution must pass them; with no tests at all, code is not trained on by default."""

import json

import pandas as pd
import pytest

from distill_assets.lib.filters.verify import apply_verification, keep_unverifiable
from distill_assets.lib.tasks import Category
from distill_assets.lib.verification.sandbox import SandboxUnavailable
from distill_assets.lib.verification.test_writer import parse_tests, signature_of, write_missing_tests
from resources.llm import ChatResult

SOLUTION = "```python\ndef add(a, b):\n    # secret body\n    return a + b\n```"
WRONG = "```python\ndef add(a, b):\n    return a - b\n```"


def _cat(**filters):
    return Category.model_validate({"name": "code", "description": "d", "system_prompt": "p", "seeds": "s.jsonl",
                                    "eval": "e.jsonl", "verify": "code",
                                    "methods": {"response": {"count": 1}}, "filters": filters})


def _rows(*responses):
    return pd.DataFrame({"example_id": [f"e{i}" for i in range(len(responses))], "instruction": "Add two numbers.",
                         "response": list(responses), "tests": [None] * len(responses),
                         "entry_point": [None] * len(responses), "seed_id": "s", "method": "self_instruct"})


def test_signature_has_no_body():
    name, sig = signature_of(SOLUTION)
    assert name == "add" and sig == "def add(a, b)"
    assert signature_of("no code here") is None


def test_parse_keeps_only_single_asserts_of_the_function():
    text = json.dumps({"tests": ["assert add(1, 2) == 3", "import os", "assert sub(1, 1) == 0",
                                 "assert add(1, 2) == 3", "assert add(2, 2) == 4; x = 1", "assert add(0, 0) == 0"]})
    assert parse_tests(text, "add", 5) == ["assert add(1, 2) == 3", "assert add(0, 0) == 0"]
    assert parse_tests("not json\nassert add(1,1) == 2\n", "add", 3) == ["assert add(1,1) == 2"]


def test_writer_never_sees_the_solution_and_wrong_code_fails():
    seen = []

    def complete(reqs):
        seen.extend(reqs)
        return [ChatResult("k", "m", "ok", json.dumps({"tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]}))
                for _ in reqs]

    rows, counts = write_missing_tests(_rows(SOLUTION, WRONG), 3, complete)
    assert counts == {"asked": 2, "written": 2}
    prompt = json.dumps([r.messages for r in seen])
    assert "secret body" not in prompt and "return a" not in prompt and "def add(a, b)" in prompt
    assert set(rows["tests_source"]) == {"teacher_written"}
    out = apply_verification(rows, _cat())
    assert out["verification_status"].tolist() == ["pass", "fail"]
    assert json.loads(out["evidence"][0])["tests_source"] == "teacher_written"
    assert json.loads(out["evidence"][0])["isolation"] == "bwrap"


def test_code_without_any_tests_is_not_trained_on_by_default():
    out = apply_verification(_rows(SOLUTION), _cat())
    assert out["verification_status"].tolist() == ["unverifiable"] and not out["keep"].any()
    assert keep_unverifiable(_cat(keep_unverifiable=True))
    assert not keep_unverifiable(_cat())


def test_no_sandbox_stops_verification():
    def unavailable(*a, **k):
        raise SandboxUnavailable("bubblewrap is not installed: apt-get install -y bubblewrap")

    rows = _rows(SOLUTION).assign(tests=json.dumps(["assert add(1, 2) == 3"]))
    with pytest.raises(SandboxUnavailable, match="apt-get install"):
        apply_verification(rows, _cat(), sandbox=unavailable)
