"""Failure batches: which categories' new failures fire a targeted retrain, as the production sensor plans it.

Per sensor tick:
1. every finished `*.jsonl`/`*.csv` in the drop folder is ingested and moved to `processed/`;
2. for each category, the failures ingested after the cursor that are still untrained (pending or held out)
   form a candidate batch; it fires when it holds at least `retrain_min_failures` pending failures, or when
   its oldest pending failure was ingested more than `retrain_max_wait_s` ago (both per category in the task
   file, overridable when building the sensor);
3. a fired batch gets `batch_key` = category + hash of its failure ids. That key is the run_key, so one batch
   is one run, and it is written to `failure_batches` and to each failure *before* the cursor moves. If a
   tick's cursor write is lost, the next tick finds the same batch by its key and asks for the same run_key,
   which Dagster drops as a duplicate: re-evaluation never adds a run;
4. each RunRequest targets exactly one category partition of `production_retrain_job`. All batches of one
   tick share a wave tag; `production_train_sensor` starts the (unpartitioned) training/eval job once every
   run of the wave has succeeded.

The cursor is JSON `{category: last ingest_seq consumed}`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd

from distill_assets.lib.ids import content_hash
from distill_assets.lib.production import HELD_OUT, PENDING
from distill_assets.lib.tasks import TaskFile
from resources.store import DuckDBStore, insert_df


@dataclass(frozen=True)
class Batch:
    category: str
    batch_key: str
    failure_ids: tuple[str, ...]
    pending: int
    held_out: int
    max_seq: int
    reason: str  # min_failures | max_wait | resumed
    wave: str = ""
    wave_size: int = 0


@dataclass
class Plan:
    batches: list[Batch]
    cursor: dict[str, int]
    waiting: dict[str, str] = field(default_factory=dict)  # category -> why it did not fire


def parse_cursor(cursor: str | None) -> dict[str, int]:
    if not cursor:
        return {}
    try:
        data = json.loads(cursor)
    except json.JSONDecodeError:
        return {}
    return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}


def batch_key(category: str, failure_ids: list[str]) -> str:
    return f"{category}-{content_hash('failure-batch', category, sorted(failure_ids))}"


def plan_batches(store: DuckDBStore, cursor: dict[str, int], now: datetime, tasks: TaskFile,
                 min_failures: int | None = None, max_wait_s: float | None = None) -> Plan:
    """Decide which categories fire, record the new batches, and return the next cursor.

    Recording happens in one transaction; the same inputs always give the same batch keys."""

    def record(conn) -> Plan:  # may run again after a lake commit conflict: every try starts afresh
        plan = Plan(batches=[], cursor=dict(cursor))
        fresh: list[Batch] = []
        rows = conn.execute(
            """SELECT failure_id, category, status, ingest_seq, ingested_at, batch_key FROM production_failures
               ORDER BY ingest_seq"""
        ).df()
        for cat in tasks.names:
            c = tasks.category(cat)
            after = int(cursor.get(cat, 0))
            new = rows[(rows["category"] == cat) & (rows["ingest_seq"] > after)]
            # batches recorded by an earlier evaluation whose cursor never got saved: ask again, same key
            seen = new[new["batch_key"].notna()]
            if not seen.empty:
                stored = conn.execute(
                    "SELECT * FROM failure_batches WHERE list_contains(?, batch_key) ORDER BY max_seq",
                    [sorted(seen["batch_key"].unique().tolist())],
                ).df()
                for _, b in stored.iterrows():
                    plan.batches.append(Batch(cat, b["batch_key"], tuple(json.loads(b["failure_ids"])),
                                              int(b["pending"]), int(b["held_out"]), int(b["max_seq"]),
                                              "resumed", b["wave"], int(b["wave_size"])))
                    plan.cursor[cat] = max(plan.cursor.get(cat, 0), int(b["max_seq"]))
                continue  # fresh failures of this category wait for the next tick, in their own wave
            todo = new[new["batch_key"].isna() & new["status"].isin([PENDING, HELD_OUT])]
            pending = todo[todo["status"] == PENDING]
            need = min_failures if min_failures is not None else c.retrain_min_failures
            wait = max_wait_s if max_wait_s is not None else c.retrain_max_wait_s
            if pending.empty:
                plan.waiting[cat] = "no new pending failures"
                continue
            oldest = pd.Timestamp(pending["ingested_at"].min())
            age = (pd.Timestamp(now) - oldest).total_seconds()
            if len(pending) >= need:
                reason = "min_failures"
            elif age >= wait:
                reason = "max_wait"
            else:
                plan.waiting[cat] = (f"{len(pending)}/{need} pending failures; oldest waited {age:.0f}s "
                                     f"of {wait:.0f}s")
                continue
            ids = todo["failure_id"].tolist()
            fresh.append(Batch(cat, batch_key(cat, ids), tuple(ids), int(len(pending)),
                               int((todo["status"] == HELD_OUT).sum()), int(todo["ingest_seq"].max()), reason))
        if fresh:
            wave = "w-" + content_hash("wave", sorted(b.batch_key for b in fresh))
            fresh = [Batch(**{**b.__dict__, "wave": wave, "wave_size": len(fresh)}) for b in fresh]
            for b in fresh:
                insert_df(conn, "failure_batches", pd.DataFrame([{
                    "batch_key": b.batch_key, "wave": b.wave, "wave_size": b.wave_size, "category": b.category,
                    "failure_ids": json.dumps(list(b.failure_ids)), "pending": b.pending, "held_out": b.held_out,
                    "max_seq": b.max_seq, "reason": b.reason, "created_at": now}]), on_conflict="ignore")
                conn.execute(
                    """UPDATE production_failures SET batch_key = ?, updated_at = ?
                       WHERE list_contains(?, failure_id) AND batch_key IS NULL""",
                    [b.batch_key, now, list(b.failure_ids)],
                )
                plan.cursor[b.category] = max(plan.cursor.get(b.category, 0), b.max_seq)
            plan.batches.extend(fresh)
        return plan

    return store.transact(record)
