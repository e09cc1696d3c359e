"""The real embedded teacher: llama.cpp serving the packaged SmolLM2-135M-Instruct over the OpenAI protocol."""

import dagster as dg
import pandas as pd
import pytest

from distill_assets.defs.generation import raw_generations
from distill_assets.defs.resources import embedded_llm
from distill_assets.defs.seeds import seed_prompts
from distill_assets.lib import tasks as tasks_mod


@pytest.fixture
def tiny_task(tmp_path, monkeypatch):
    from distill_assets.lib.settings import DEMO_TASKS

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

    resources = {**duck_resources, "teacher": embedded_llm(embedded_threads=2)}
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


def test_embedded_judge_answers_follow_the_verdict_schema(store):
    """Constrained decoding on the real llama.cpp server: the 135M judge's answers are always readable."""
    import json

    from distill_assets.lib.evaluation.pairwise import build_requests, parse_verdict
    from distill_assets.lib.filters.judge import judge_frame, parse_judge_answer
    from distill_assets.lib.tasks import load_tasks
    from tests.lib.filters.test_judge import _frame

    cat = load_tasks().category("support")
    cat = cat.model_copy(update={"filters": cat.filters.model_copy(update={"judge_max_tokens": 48})})
    with embedded_llm(role="judge", embedded_threads=2).session(store) as s:
        out = judge_frame(_frame(3), cat, lambda reqs: s.complete(reqs, category="support"))
        assert set(out["judge_status"]) == {"ok"}  # no unparseable answer, so no retry call
        assert out["judge_score"].between(1, 5).all()
        pairs = pd.DataFrame([{"pair_id": "p0", "category": "support", "prompt": "Where is my parcel?",
                               "candidate_response": "It ships in 2 days.", "opponent_response": "No idea."}])
        verdicts = s.complete(build_requests(pairs, max_tokens=48))
        assert all(parse_verdict(v.content) in {"A", "B", "tie"} for v in verdicts)
    raw = store.query_df("SELECT response FROM teacher_calls WHERE request_json LIKE ?",
                         ['%"overall": {"type": "integer"%'])["response"]
    assert len(raw) == 3 and all(parse_judge_answer(r).ok for r in raw)
    assert all(json.loads(r) for r in raw if r.rstrip().endswith("}"))
