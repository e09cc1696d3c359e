"""The real embedded teacher: llama.cpp serving the packaged SmolLM2-135M-Instruct over the OpenAI protocol."""

import dagster as dg
import pytest

from distill_assets import tasks as tasks_mod
from distill_assets.generation import raw_generations
from distill_assets.seeds import seed_prompts
from resources.llm import LLMResource


@pytest.fixture
def tiny_task(tmp_path, monkeypatch):
    from distill_assets.settings import DEMO_TASKS

    demo = DEMO_TASKS.parent
    (tmp_path / "t.yaml").write_text(
        "categories:\n  - name: math\n    description: word problems\n    system_prompt: Answer briefly.\n"
        f"    seeds: {demo}/seeds/math.jsonl\n    eval: {demo}/eval/math.jsonl\n"
        "    samples_per_prompt: 1\n    max_tokens: 32\n    methods: {response: 2, evol_instruct: 1}\n"
        "    evol_instruct_rounds: 1\n".replace("    evol_instruct_rounds: 1\n", "")
    )
    monkeypatch.setenv("DISTILL_TASKS", str(tmp_path / "t.yaml"))
    monkeypatch.delenv("TEACHER_BASE_URL", raising=False)
    tasks_mod._cached.cache_clear()
    yield
    tasks_mod._cached.cache_clear()


def test_embedded_llama_cpp_teacher_generates_and_caches(tiny_task, duck_resources, store):
    from resources.llama_server import EMBEDDED_ALIAS

    resources = {**duck_resources, "teacher": LLMResource(embedded_threads=2)}
    r = dg.materialize([seed_prompts, raw_generations], resources=resources, partition_key="math")
    assert r.success
    rows = store.query_df("SELECT * FROM raw_generations")
    assert len(rows) >= 2 and rows["response"].str.strip().str.len().gt(0).all()
    assert set(rows["teacher_model"]) == {EMBEDDED_ALIAS}
    assert set(rows["method"]) <= {"response", "evol_instruct"}
    calls = store.query_df("SELECT count(*) AS n FROM teacher_calls")["n"][0]
    # the rerun is answered from the cache: no new call, same rows
    r2 = dg.materialize([seed_prompts, raw_generations], resources=resources, partition_key="math",
                        selection=[raw_generations])
    md = r2.asset_materializations_for_node("raw_generations")[0].metadata
    assert md["calls_from_cache"].value == md["calls"].value
    assert store.query_df("SELECT count(*) AS n FROM teacher_calls")["n"][0] == calls
