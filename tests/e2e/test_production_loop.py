"""End to end over the whole graph: failures -> sensor -> targeted run -> held-out failures never in training.

Needs every per-category asset (seeds through clean_dataset, eval_set) in distill_assets.definitions, the
fake OpenAI server as teacher and judge, and the packaged embedder.
"""

import json

import dagster as dg
import pytest

from distill_assets.defs.production_sensors import build_production_failure_sensor
from distill_assets.lib.production import intake, state


@pytest.mark.e2e  # the real loop in CI: intake -> sensor -> targeted run -> clean_dataset
def test_failures_trigger_a_targeted_run_and_heldout_stays_out(distill_home, store, fake_server, monkeypatch,
                                                               tmp_path):
    monkeypatch.setenv("TEACHER_BASE_URL", fake_server.base_url)
    monkeypatch.setenv("TEACHER_MODEL", fake_server.model)
    from distill_assets import definitions
    from distill_assets.defs import production_jobs as jobs
    from distill_assets.defs.resources import build_resources

    base = definitions.defs()
    defs = dg.Definitions(assets=list(base.assets or []), asset_checks=list(base.asset_checks or []),
                          jobs=jobs.jobs, resources=build_resources())
    job = defs.resolve_job_def("production_retrain_job")

    recs = [{"category": "math", "input": f"A shop sells {i} apples a day. How many in {i + 2} days?",
             "bad_output": "I do not know.", "expected": f"{i * (i + 2)}"} for i in range(3, 15)]
    intake.add_failures(store, recs)
    held = state.list_failures(store, status="held_out", category="math")
    assert not held.empty, "the demo fraction should hold some of 12 failures out"

    instance = dg.DagsterInstance.ephemeral()
    sensor = build_production_failure_sensor(min_failures=5, drop_folder=str(tmp_path / "inbox"))
    res = sensor(dg.build_sensor_context(instance=instance, resources={"store": store}))
    assert [r.partition_key for r in res.run_requests] == ["math"]
    rr = res.run_requests[0]
    result = job.execute_in_process(partition_key=rr.partition_key, tags=rr.tags, instance=instance,
                                    raise_on_error=False)
    assert result.success, [e.message for e in result.all_events if e.is_failure]

    done = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert set(jobs.CATEGORY_ASSETS) <= done
    for key in jobs.CATEGORY_ASSETS:
        parts = instance.get_materialized_partitions(dg.AssetKey(key))
        assert parts == {"math"}, (key, parts)  # only the targeted partition

    clean = store.query_df("SELECT * FROM clean_dataset WHERE category = 'math'")
    # the user turns of the training messages hold every instruction the student trains on
    text = " ".join(m["content"] for msgs in clean["messages"] for m in json.loads(msgs))
    for prompt in held["input"]:
        assert prompt not in text
    seeds = store.query_df("SELECT prompt, source FROM seed_prompts WHERE category = 'math'")
    assert set(state.list_failures(store, status="in_training")["input"]) <= set(seeds["prompt"])
    ev = store.query_df("SELECT prompt FROM eval_set WHERE category = 'math'")
    assert set(held["input"]) <= set(ev["prompt"])
