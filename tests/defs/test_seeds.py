"""The seed_prompts asset: a bad seed file fails the run and leaves the stored partition as it was."""

import shutil

import dagster as dg

from distill_assets.defs.seeds import seed_prompts
from distill_assets.lib import tasks as tasks_mod
from distill_assets.lib.tasks import load_tasks


def test_bad_seed_file_fails_materialization_and_writes_nothing(tmp_path, duck_resources, store, monkeypatch):
    demo = load_tasks().path
    task_dir = tmp_path / "task"
    shutil.copytree(demo.parent, task_dir)
    monkeypatch.setenv("DISTILL_TASKS", str(task_dir / "tasks.yaml"))
    tasks_mod._cached.cache_clear()
    ok = dg.materialize([seed_prompts], resources=duck_resources, partition_key="math")
    assert ok.success
    before = store.query_df("SELECT count(*) AS n FROM seed_prompts WHERE category = 'math'")["n"][0]
    (task_dir / "seeds" / "math.jsonl").write_bytes(b'{"prompt": "fine"}\n{"prompt": \n')
    bad = dg.materialize([seed_prompts], resources=duck_resources, partition_key="math", raise_on_error=False)
    assert not bad.success
    after = store.query_df("SELECT count(*) AS n FROM seed_prompts WHERE category = 'math'")["n"][0]
    assert after == before  # the old partition is intact
    tasks_mod._cached.cache_clear()
