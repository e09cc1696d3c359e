"""Sparse KD from the embedded teacher's real logprobs: llama.cpp answers with top-k logprobs -> teacher_logprobs
-> clean rows find them through lineage -> `lora_adapter` runs a few sparse-KD steps of the tiny student (random
weights, the SmolLM2 tokenizer)."""

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from transformers import AutoTokenizer

from distill_assets.defs import lora, student
from distill_assets.defs.generation import raw_generations
from distill_assets.defs.partitions import CATEGORY
from distill_assets.defs.resources import embedded_llm
from distill_assets.defs.seeds import seed_prompts
from distill_assets.lib import tasks as tasks_mod
from distill_assets.lib.generation.logprobs import example_logprobs, student_token_map, vocab_hash
from resources.llama_server import EMBEDDED_ALIAS
from tests.lib.training.tiny_model import session_dirs

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
                                                     monkeypatch):
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

    # lora_adapter in mode sparse_kd, through Dagster: clean_dataset -> lineage -> teacher_logprobs -> training
    tiny = session_dirs(tmp_path_factory)
    monkeypatch.setenv("STUDENT_BASE", str(tiny["base"]))

    @dg.asset(name="clean_dataset", partitions_def=CATEGORY, metadata={"partition_expr": "category"})
    def clean_stand_in(context) -> pd.DataFrame:
        return clean[clean["category"] == context.partition_key].reset_index(drop=True)

    assert dg.materialize([clean_stand_in], partition_key="support", resources=duck_resources).success
    cfg = {"ops": {"lora_adapter": {"config": {
        "mode": "sparse_kd", "kd_alpha": 0.5, "max_steps": 6, "effective_batch_size": 2, "per_device_batch_size": 2,
        "learning_rate": 5e-3, "max_seq_len": 128, "lora_r": 8, "lora_alpha": 16, "num_threads": 2,
        "profile": "full"}}}}
    r = dg.materialize([clean_stand_in, *student.assets, *lora.assets], resources=duck_resources, run_config=cfg,
                       selection=[a.key for a in [*student.assets, *lora.assets]])
    assert r.success
    md = r.asset_materializations_for_node("lora_adapter")[0].metadata
    kd = md["kd"].value
    assert kd["tokenizer"] == vocab_hash(AutoTokenizer.from_pretrained(str(tiny["base"])))
    assert kd["rows"]["train"] == {"aligned": 2} and kd["teacher_models"] == [EMBEDDED_ALIAS]  # llama.cpp's tokens are the student's
    history = json.loads((Path(md["path"].value) / "loss_history.json").read_text())
    kl = [h["kd_kl"] for h in history if "kd_kl" in h and "loss" in h]
    # step 1 runs at warmup learning rate 0; after it the KL to the teacher's top-5 falls step by step
    assert len(kl) == 6 and kl[-1] < kl[0] - 0.5 and sum(b < a for a, b in zip(kl, kl[1:])) >= 4, kl
