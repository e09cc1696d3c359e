"""`raw_generations` with `generation.mode: batch` in the task file, against the fake Batch API; and the
TEACHER_MODE / TEACHER_BATCH_DISCOUNT variables."""

import json
from pathlib import Path

import dagster as dg
import pytest

from distill_assets.defs.generation import raw_generations
from distill_assets.defs.resources import llm_from_env
from distill_assets.defs.seeds import seed_prompts
from distill_assets.lib.errors import InputErrors
from distill_assets.lib.tasks import parse_task_file
from resources.llm import LLMResource
from tests.fakes.batch_server import FakeBatchServer

DEMO = Path(__file__).resolve().parents[2] / "distill_assets" / "demo"


def _task_file(tmp_path: Path, generation: str) -> Path:
    path = tmp_path / "tasks.yaml"
    path.write_text(
        "categories:\n"
        f"  - name: support\n    description: customer support\n    system_prompt: Be brief.\n"
        f"    seeds: {DEMO}/seeds/support.jsonl\n    eval: {DEMO}/eval/support.jsonl\n"
        f"    samples_per_prompt: 2\n    methods: {{response: 5}}\n{generation}")
    return path


def test_raw_generations_of_a_batch_category(tmp_path, monkeypatch, duck_resources, store):
    monkeypatch.setenv("DISTILL_TASKS", str(_task_file(tmp_path, "    generation:\n      mode: batch\n")))
    with FakeBatchServer(polls_per_stage=2) as srv:
        teacher = LLMResource(base_url=srv.base_url, model="fake-teacher", batch_poll_interval_s=0.02,
                              batch_max_poll_interval_s=0.05, price_prompt_per_1m=1.0, price_completion_per_1m=4.0)
        result = dg.materialize([seed_prompts, raw_generations], partition_key="support",
                                resources={**duck_resources, "teacher": teacher})
        assert result.success
        assert srv.stats["batches_created"] == 1 and srv.stats["files_created"] == 1
        assert srv.stats["chat_calls"] == 0
        (batch,) = srv.batches.values()
        assert len(json.loads(batch["_items"])) == 10  # 5 seeds x 2 samples, one job
    rows = store.query_df("SELECT r.call_key, r.response, t.response AS ledger, t.cost_usd, t.prompt_tokens, "
                          "t.completion_tokens, t.category FROM raw_generations r JOIN teacher_calls t USING "
                          "(call_key) WHERE r.category = 'support'")
    assert len(rows) == 10 and (rows["response"] == rows["ledger"]).all() and set(rows["category"]) == {"support"}
    expected = (rows["prompt_tokens"] * 1.0 + rows["completion_tokens"] * 4.0) / 1e6 * 0.5
    assert rows["cost_usd"].tolist() == pytest.approx(expected.tolist())
    meta = result.asset_materializations_for_node("raw_generations")[0].metadata
    assert meta["teacher"].data["mode"] == "batch"
    assert meta["cost_usd"].value == pytest.approx(round(expected.sum(), 6))
    (row,) = store.query_df("SELECT status, category, completed_at FROM teacher_batches").to_dict("records")
    assert row["status"] == "completed" and row["category"] == "support" and row["completed_at"] is not None


def test_generation_mode_in_the_task_file_is_validated(tmp_path):
    assert parse_task_file(_task_file(tmp_path, "")).category("support").generation.mode is None
    with pytest.raises(InputErrors) as ei:
        parse_task_file(_task_file(tmp_path, "    generation:\n      mode: offline\n"))
    err = ei.value.errors[0]
    assert err.field == "categories.0.generation.mode" and err.line == 10  # the `mode:` line


def test_teacher_mode_and_discount_from_the_environment(monkeypatch):
    monkeypatch.setenv("TEACHER_BASE_URL", "https://api.openai.com/v1")
    monkeypatch.setenv("TEACHER_MODEL", "gpt-4o-mini")
    assert llm_from_env("TEACHER", "teacher").mode == "online"
    monkeypatch.setenv("TEACHER_MODE", "batch")
    monkeypatch.setenv("TEACHER_BATCH_DISCOUNT", "0.4")
    teacher = llm_from_env("TEACHER", "teacher")
    assert (teacher.mode, teacher.batch_discount) == ("batch", 0.4)
    assert teacher.cost(1_000_000, 0) == 0 and teacher.describe()["mode"] == "batch"
    judge = llm_from_env("JUDGE", "judge", fallback="TEACHER")  # same endpoint: inherits
    assert (judge.mode, judge.batch_discount) == ("batch", 0.4)
    monkeypatch.setenv("JUDGE_BASE_URL", "http://judge-box:8000/v1")  # another host: its own setting
    assert llm_from_env("JUDGE", "judge", fallback="TEACHER").mode == "online"
    monkeypatch.setenv("TEACHER_MODE", "offline")
    with pytest.raises(ValueError, match="TEACHER_MODE='offline' is not a valid mode"):
        llm_from_env("TEACHER", "teacher")
    monkeypatch.setenv("TEACHER_MODE", "batch")
    monkeypatch.setenv("TEACHER_BATCH_DISCOUNT", "2")
    with pytest.raises(ValueError, match="TEACHER_BATCH_DISCOUNT='2' is not a valid batch_discount"):
        llm_from_env("TEACHER", "teacher")
