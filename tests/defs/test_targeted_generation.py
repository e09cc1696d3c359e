"""Issue 7, part 3: "the teacher answers each failure, and Self-Instruct or Evol-Instruct variants are generated
near each one". Checked on the generation plan (`initial_steps`) of the real seed_prompts partition, no teacher
needed: every training-side failure must be answered, and must be the parent of an evol/self-instruct step."""

import dagster as dg
import pytest

from distill_assets.defs.seeds import seed_prompts
from distill_assets.lib.generation.plan import initial_steps
from distill_assets.lib.production import intake, state
from distill_assets.lib.tasks import load_tasks


@pytest.mark.parametrize("category", ["support", "math"])
def test_every_training_side_failure_is_answered_and_varied(store, duck_resources, category):
    recs = [{"category": category, "input": f"Production question number {i} about {category}, please help",
             "bad_output": "wrong", "expected": f"answer {i}"} for i in range(6)]
    intake.add_failures(store, recs)
    assert dg.materialize([seed_prompts], partition_key=category, resources=duck_resources).success
    seeds = store.query_df("SELECT * FROM seed_prompts WHERE category = ?", [category])
    prod = set(seeds.loc[seeds["source"] == "production", "seed_id"])
    assert len(prod) == int((state.list_failures(store, category=category)["split"] == "train").sum()) > 0

    steps = initial_steps(load_tasks().category(category), seeds)
    answered = {p for s in steps if s.kind == "answer" for p in s.parent_ids}
    varied = {p for s in steps if s.kind in ("evolve", "write_instructions", "synthesize") for p in s.parent_ids}
    assert prod <= answered, f"{len(prod - answered)} of {len(prod)} failures never reach the teacher"
    assert prod <= varied, f"{len(prod - varied)} of {len(prod)} failures get no variant"
