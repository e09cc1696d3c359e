"""On a DuckLake every production and evaluation writer survives a commit conflict: the whole transaction runs
again, and its effect lands exactly once (no doubled rejects, batches or reasons)."""

from __future__ import annotations

import json
from contextlib import contextmanager

import duckdb
import pandas as pd
import pytest

from distill_assets.lib.evaluation.pipeline import store_results
from distill_assets.lib.ledger import open_store
from distill_assets.lib.production import batches, intake, promotion, state
from distill_assets.lib.tasks import load_tasks
from resources import lake
from resources import store as store_mod


@pytest.fixture
def lake_store(tmp_path, lake_location):
    store = open_store(str(tmp_path / "d.duckdb"), **lake_location)
    store.table_exists("lineage")  # attach and create the schema now: the injected conflicts hit the writers
    return store


@pytest.fixture
def conflicts(monkeypatch):
    """`arm(n)`: the next n lake commits fail as a concurrent writer's would, after their statements ran."""
    real, left = lake.transaction, {"n": 0}

    @contextmanager
    def conflicting(con):
        with real(con):
            yield con
            if left["n"] > 0:
                left["n"] -= 1
                raise duckdb.TransactionException("Transaction conflict: injected by the test")

    monkeypatch.setattr(lake, "transaction", conflicting)

    def arm(n: int = 1) -> int:
        left["n"] = n
        return store_mod.conflicts_retried()

    return arm


def _failure(i: int) -> dict:
    return {"category": "math", "input": f"What is {i} + {i}?", "bad_output": "I think 7", "expected": str(2 * i)}


def test_production_writers_retry_a_conflict_and_write_once(lake_store, conflicts):
    tasks = load_tasks()
    before = conflicts(1)
    report = intake.add_failures(lake_store, [_failure(i) for i in range(6)] + [_failure(0), "not a dict"],
                                 tasks=tasks)
    assert store_mod.conflicts_retried() == before + 1
    assert report.inserted == 6 and report.duplicates == 1 and len(report.rejects) == 2
    rejects = state.list_rejects(lake_store)
    assert sorted(rejects["reason"]) == ["duplicate", "not_an_object"]
    failures = state.list_failures(lake_store)
    assert sorted(failures["ingest_seq"]) == list(range(1, 7))

    pending = failures[failures["status"] == "pending"]["failure_id"].tolist()
    assert pending
    conflicts(1)
    plan = batches.plan_batches(lake_store, {}, pd.Timestamp.now(tz="UTC"), tasks, min_failures=1, max_wait_s=0)
    assert [b.category for b in plan.batches] == ["math"]
    stored = lake_store.query_df("SELECT * FROM failure_batches")
    assert len(stored) == 1 and stored.iloc[0]["batch_key"] == plan.batches[0].batch_key

    before = conflicts(1)
    assert state.set_status(lake_store, pending, state.IN_TRAINING) == len(pending)
    assert store_mod.conflicts_retried() == before + 1
    assert set(state.list_failures(lake_store, status=state.IN_TRAINING)["failure_id"]) == set(pending)


def test_promotion_and_eval_writers_retry_a_conflict_and_write_once(lake_store, conflicts):
    lake_store.insert_df("model_versions", pd.DataFrame([{"adapter_version": "v2", "promoted": True,
                                                          "reasons": json.dumps(["gate passed"]),
                                                          "decided_at": store_mod.utcnow()}]))
    side = {"n": 4, "candidate": 0.5, "baseline": 0.75}
    decision = {"candidate": "v2", "baseline_version": "v1", "gate_promoted": True, "promoted": False,
                "comparison": {"heldout": side, "eval": side, "reasons": ["worse on the held-out failures"]}}
    before = conflicts(1)
    promotion.record(lake_store, decision, 0, "run1")
    assert store_mod.conflicts_retried() == before + 1
    mv = lake_store.query_df("SELECT promoted, reasons FROM model_versions")
    assert len(mv) == 1 and not bool(mv.iloc[0]["promoted"])
    assert json.loads(mv.iloc[0]["reasons"]) == ["gate passed", "worse on the held-out failures"]
    assert len(lake_store.query_df("SELECT * FROM promotion_decisions")) == 1

    results = pd.DataFrame({"adapter_version": "v2", "variant": "merged", "example_id": ["a", "b"],
                            "score": [1.0, 0.0]})
    summary = pd.DataFrame({"adapter_version": ["v2"], "variant": ["merged"], "category": ["math"],
                            "task_score": [0.5]})
    store_results(lake_store, results, summary, "v2")
    before = conflicts(1)
    store_results(lake_store, results.assign(score=[1.0, 1.0]), summary.assign(task_score=1.0), "v2")
    assert store_mod.conflicts_retried() == before + 1
    assert lake_store.query_df("SELECT score FROM eval_results ORDER BY example_id")["score"].tolist() == [1.0, 1.0]
    assert lake_store.query_df("SELECT task_score FROM eval_summary")["task_score"].tolist() == [1.0]
