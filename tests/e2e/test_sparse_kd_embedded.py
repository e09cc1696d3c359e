"""Sparse KD from the embedded teacher's real logprobs: llama.cpp answers with top-k logprobs -> teacher_logprobs
-> clean rows find them through lineage -> a few sparse-KD steps of the tiny student (SmolLM2 tokenizer)."""

import json

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from distill_assets.defs.generation import raw_generations
from distill_assets.defs.resources import embedded_llm
from distill_assets.defs.seeds import seed_prompts
from distill_assets.lib import tasks as tasks_mod
from distill_assets.lib.generation.logprobs import example_logprobs, student_token_map, vocab_hash
from distill_assets.lib.training.data import split_dataset
from distill_assets.lib.training.lora import train_lora
from tests.lib.training.tiny_model import session_dirs, tiny_plan

pytestmark = pytest.mark.e2e  # real llama.cpp logprobs and real training, ~1-2 min on 2 cores


@pytest.fixture
def logprob_task(tmp_path, monkeypatch):
    from distill_assets.lib.settings import DEMO_TASKS

    demo = DEMO_TASKS.parent
    (tmp_path / "t.yaml").write_text(
        "categories:\n  - name: support\n    description: customer support\n    system_prompt: Answer briefly.\n"
        f"    seeds: {demo}/seeds/support.jsonl\n    eval: {demo}/eval/support.jsonl\n"
        "    samples_per_prompt: 1\n    max_tokens: 16\n    methods: {response: 3}\n"
        "    generation: {logprobs: 5}\n")
    monkeypatch.setenv("DISTILL_TASKS", str(tmp_path / "t.yaml"))
    monkeypatch.delenv("TEACHER_BASE_URL", raising=False)
    monkeypatch.delenv("STUDENT_BASE", raising=False)
    tasks_mod._cached.cache_clear()
    yield
    tasks_mod._cached.cache_clear()


def test_embedded_teacher_logprobs_train_the_student(logprob_task, duck_resources, store, tmp_path_factory,
                                                     tmp_path):
    resources = {**duck_resources, "teacher": embedded_llm(embedded_threads=2)}
    r = dg.materialize([seed_prompts, raw_generations], resources=resources, partition_key="support")
    assert r.success
    md = r.asset_materializations_for_node("raw_generations")[0].metadata["teacher_logprobs"].value
    raw = store.query_df("SELECT * FROM raw_generations")
    assert len(raw) == 3 and md["top_k"] == 5 and md["new_rows"] == 3
    assert all(json.loads(p)["top_logprobs"] == 5 for p in raw["params"])
    lp = store.query_df("SELECT * FROM teacher_logprobs")
    assert set(lp["call_key"]) == set(raw["call_key"]) and set(lp["k"]) == {5}
    assert set(lp["tokenizer"]) == {student_token_map().name}
    assert (lp["n_tokens"] == raw.set_index("call_key").loc[lp["call_key"], "completion_tokens"].to_numpy()).all()

    clean = pd.DataFrame({"example_id": raw["example_id"], "generation_id": raw["generation_id"],
                          "category": "support", "messages": raw["messages"],
                          "split": ["validation"] + ["train"] * (len(raw) - 1)})
    teacher = example_logprobs(store, clean)
    assert set(teacher) == set(clean["example_id"])
    for t in teacher.values():  # well-formed: the sampled token scored, best first, a probability mass <= 1
        assert (t.ids[:, 1] >= 0).all() and np.isfinite(t.logprobs[:, 0].astype(float)).all()
        top = t.logprobs[:, 1:].astype(np.float64)
        assert (np.diff(top, axis=1) <= 1e-3).all() and (np.exp(top).sum(1) <= 1.01).all()

    tiny = session_dirs(tmp_path_factory)
    tr, va, _ = split_dataset(clean, 0.1)
    plan = tiny_plan(mode="sparse_kd", kd_alpha=0.5, max_steps=6, effective_batch_size=2, per_device_batch_size=2)
    res = train_lora(tiny["base"], tr, va, plan, tmp_path / "skd", base_model_id="tiny", dataset_version="v",
                     teacher_logprobs=teacher)
    from transformers import AutoTokenizer

    assert res.kd["tokenizer"] == vocab_hash(AutoTokenizer.from_pretrained(str(tiny["base"])))
    assert res.kd["rows"]["train"].get("aligned", 0) == len(tr)  # llama.cpp's tokens are the student's
    kl = [h["kd_kl"] for h in res.history if "kd_kl" in h and "loss" in h]
    # step 1 runs at warmup learning rate 0; after it the KL to the teacher's top-5 falls step by step
    assert len(kl) == 6 and kl[-1] < kl[0] - 0.5 and sum(b < a for a, b in zip(kl, kl[1:])) >= 4, kl
