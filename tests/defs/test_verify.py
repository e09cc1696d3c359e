import json

import dagster as dg
import pandas as pd
import pytest

from distill_assets.defs.partitions import CATEGORY
from distill_assets.defs.verify import verified
from distill_assets.lib.tasks import load_tasks
from resources.llm import LLMResource


def _row(cat, i, response, reference=None, tests=None, entry_point=None, seed="s1", instruction="q"):
    return {"generation_id": f"g{cat}{i}", "example_id": f"g{cat}{i}", "seed_id": seed, "parent_ids": "[]",
            "category": cat, "method": "response", "messages": "[]", "system_prompt": "", "instruction": instruction,
            "response": response, "teacher_model": "fake", "params": "{}", "call_key": f"k{i}", "sample_index": i,
            "prompt_tokens": 1, "completion_tokens": 1, "latency_s": 0.0, "finish_reason": "stop",
            "difficulty": "easy", "reference": reference, "tests": json.dumps(tests or []),
            "entry_point": entry_point, "source": "seed", "evol_chain": "[]", "created_at": "2026-01-01",
            "judge_score": 5.0, "judge_scores": "{}", "judge_rationale": "", "judge_status": "ok",
            "keep": True, "verdict": "kept", "reason": "ok", "evidence": "{}"}


FRAMES = {
    "math": [_row("math", 0, "Therefore, the answer is: 29", "29"),
             _row("math", 1, "Therefore, the answer is: 30", "29"),
             _row("math", 2, "so 8. Therefore, the answer is: 8", None, seed="s2", instruction="syn"),
             _row("math", 3, "Therefore, the answer is: 8.0", None, seed="s2", instruction="syn"),
             _row("math", 4, "Therefore, the answer is: 9", None, seed="s2", instruction="syn"),
             _row("math", 5, "Therefore, the answer is: 3", None, seed="s3", instruction="lonely"),
             {**_row("math", 6, "dropped upstream", "1"), "keep": False, "verdict": "dropped"}],
    "code": [_row("code", 0, "```python\ndef add(a, b):\n    return a + b\n```", tests=["assert add(1, 2) == 3"],
                  entry_point="add"),
             _row("code", 1, "```python\ndef add(a, b):\n    return a * b\n```", tests=["assert add(1, 2) == 3"],
                  entry_point="add"),
             _row("code", 2, "```python\ndef add(a, b):\n    while True: pass\n```",
                  tests=["assert add(1, 2) == 3"], entry_point="add"),
             _row("code", 3, "```python\ndef add(a, b):\n    return a + b\n```", tests=[], entry_point="add")],
    "classify": [_row("classify", 0, "billing", "billing"), _row("classify", 1, "Label: shipping", "billing")],
}


@pytest.fixture
def verify_defs(monkeypatch):
    base = load_tasks()
    fast = base.model_copy(update={"categories": [
        c.model_copy(update={"filters": c.filters.model_copy(update={"verify_timeout_s": 1.0,
                                                                     "generate_tests": False})})
        for c in base.categories]})
    monkeypatch.setattr("distill_assets.defs.verify.load_tasks", lambda: fast)

    @dg.asset(name="judged", partitions_def=CATEGORY, metadata={"partition_expr": "category"})
    def judged_stand_in(context) -> pd.DataFrame:
        return pd.DataFrame(FRAMES[context.partition_key])

    return [judged_stand_in, verified]


@pytest.mark.parametrize("cat,expected", [
    ("math", {"g_0": ("pass", "kept", "ok"), "g_1": ("fail", "dropped", "verify_mismatch"),
              "g_2": ("pass", "kept", "ok"), "g_3": ("pass", "kept", "ok"),
              "g_4": ("fail", "dropped", "verify_no_majority"),
              "g_5": ("unverifiable", "kept", "verify_single_sample")}),
    ("code", {"g_0": ("pass", "kept", "ok"), "g_1": ("fail", "dropped", "verify_tests_failed"),
              "g_2": ("fail", "dropped", "verify_timeout"), "g_3": ("unverifiable", "dropped", "verify_no_tests")}),
    ("classify", {"g_0": ("pass", "kept", "ok"), "g_1": ("fail", "dropped", "verify_mismatch")}),
])
def test_materialize_verified(verify_defs, duck_resources, store, cat, expected):
    # no test is written here (generate_tests off), so the teacher is never called
    teacher = LLMResource(base_url="http://127.0.0.1:9/v1", model="unused")
    res = dg.materialize(verify_defs, resources={**duck_resources, "teacher": teacher}, partition_key=cat)
    assert res.success
    out = res.output_for_node("verified")
    got = {r.example_id.replace(cat, "_"): (r.verification_status, r.verdict, r.reason) for r in out.itertuples()}
    assert got == expected
    lineage = store.query_df("SELECT example_id, verdict, reason, evidence FROM lineage WHERE stage = 'verified' "
                             "AND category = ?", [cat])
    assert len(lineage) == len(expected)
    ev = json.loads(lineage.set_index("example_id").loc[f"g{cat}0", "evidence"])
    assert ev["verification_status"] == "pass"
    if cat == "code":
        assert ev["isolation"] == "bwrap" and ev["network_isolation"] == "netns" and ev["passed"] == 1
    else:
        assert ev["extracted"] and ev["reference"]
