"""The `decontaminated` asset on a templated category: the real overlap after the template is dropped with its
evidence, template-only overlap is kept, and the metadata names what the category's texts share."""

import json

import dagster as dg
import pandas as pd
import pytest

from distill_assets.defs.decontaminate import decontaminated
from distill_assets.defs.eval_set import eval_set
from distill_assets.defs.partitions import CATEGORY
from distill_assets.defs.resources import embedded_embedder
from distill_assets.lib.records import load_eval_file
from distill_assets.lib.tasks import load_tasks

TEMPLATE = "Classify the intent of this message: "


def _row(i: int, instruction: str, response: str) -> dict:
    return {"generation_id": f"g{i}", "example_id": f"g{i}", "seed_id": "s1", "parent_ids": "[]",
            "category": "classify", "method": "response", "messages": "[]", "system_prompt": "",
            "instruction": instruction, "response": response, "teacher_model": "fake", "params": "{}",
            "call_key": f"k{i}", "sample_index": 0, "prompt_tokens": 1, "completion_tokens": 1, "latency_s": 0.0,
            "finish_reason": "stop", "difficulty": "easy", "reference": response, "tests": "[]",
            "entry_point": None, "source": "seed", "evol_chain": "[]", "created_at": "2026-01-01",
            "keep": True, "verdict": "kept", "reason": "ok", "evidence": "{}"}


@pytest.fixture(scope="module")
def embedder():
    return embedded_embedder()


def test_materialize_decontaminated_on_a_templated_category(duck_resources, store, embedder):
    cat = load_tasks().category("classify")
    copied = load_eval_file(cat.eval, cat)["prompt"].iloc[10]  # "Which carrier handles deliveries to rural Montana?"
    rows = [_row(0, TEMPLATE + "Is there a gift wrap option for the ceramic vase?", "product_question"),
            _row(1, TEMPLATE + "Can you send me the tracking link again for my kayak?", "shipping"),
            _row(2, TEMPLATE + "Quick one. " + copied.removeprefix(TEMPLATE) + " Asking for a friend.", "shipping")]

    @dg.asset(name="balanced", partitions_def=CATEGORY, metadata={"partition_expr": "category"})
    def balanced_stand_in() -> pd.DataFrame:
        return pd.DataFrame(rows)

    res = dg.materialize([balanced_stand_in, eval_set, decontaminated], partition_key="classify",
                         resources={**duck_resources, "embedder": embedder})
    assert res.success
    out = res.output_for_node("decontaminated")
    # the copied message is 7 words: matched whole by both rules, the 13-gram one reported
    assert out.set_index("example_id")["reason"].to_dict() == {"g0": "ok", "g1": "ok", "g2": "contaminated_13gram"}
    [mat] = [m for m in res.get_asset_materialization_events()
             if m.asset_key.to_user_string() == "decontaminated"]
    md = mat.materialization.metadata
    assert md["ignored_shared_text"].value["prefix"] == "classify the intent of this message"
    assert md["ignored_shared_text"].value["computed_from"] == {"seeds": 75, "eval_items": 50}
    assert md["contaminated_by_rule"].value == {"contaminated_13gram": 1, "contaminated_8gram": 0,
                                                "contaminated_embedding": 0}
    evidence = json.loads(store.query_df(
        "SELECT evidence FROM lineage WHERE stage = 'decontaminated' AND example_id = 'g2'")["evidence"].iloc[0])
    assert all("message" not in g for m in evidence["matches"] for g in m["ngrams"])
