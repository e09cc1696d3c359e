"""The store on a DuckLake with a real Postgres catalog: 8 processes write the same tables at once through the
store API (partition replaces with their lineage verdicts, shared-key upserts, keyed inserts); conflicting
commits are retried, nothing waits on a lock, and no row is lost or doubled."""

from __future__ import annotations

import multiprocessing as mp
import time

import duckdb
import pandas as pd
import pyarrow as pa
import pytest

from distill_assets.lib.ledger import open_store, record_lineage, register_artifact
from distill_assets.lib.stages import annotate
from resources import store as store_mod
from resources.io_manager import StageTable, mark_written, write_lineage, write_table

WRITERS, ROUNDS, ROWS = 8, 3, 40


def _open(home: str, location: dict):
    return open_store(f"{home}/distill.duckdb", **location)


def _writer(home: str, location: dict, w: int, barrier, results) -> None:
    try:
        store = _open(home, location)
        store.table_exists("lineage")  # attach and schema first, so the barrier lines up the writes
        barrier.wait(timeout=120)
        cat = f"c{w}"
        t0 = time.monotonic()
        for r in range(ROUNDS):
            rows = pd.DataFrame({"example_id": [f"{cat}-{i}" for i in range(ROWS)], "category": cat,
                                 "round": r, "writer": w})
            verdicts = pd.DataFrame({"example_id": rows["example_id"], "category": cat, "stage": "deduplicated",
                                     "verdict": "kept", "reason": "", "evidence": "{}", "run_id": f"r{w}.{r}",
                                     "recorded_at": store_mod.utcnow()})

            def stage(conn, rows=rows, verdicts=verdicts):  # what the IO manager does for one partition
                write_table(conn, "main", "asset_rows", rows, "category", [cat])
                mark_written(conn, "main", "asset_rows", rows, "category", [cat], f"r{w}.{r}", home)
                write_lineage(conn, StageTable(rows, "deduplicated", verdicts), [cat], home)

            store.transact(stage)
            # every writer caches the same texts: each (model, text_hash) must land once
            shared = pa.table({"model": ["m"] * 20, "text_hash": [f"h{(w + r + i) % 30}" for i in range(20)],
                               "vector": [[float(i), 1.0] for i in range(20)]})
            store.insert_df("embeddings", shared, on_conflict="ignore")
            record_lineage(store, verdicts.assign(stage="judged"), "judged", cat, f"r{w}.{r}")
        register_artifact(store, artifact_id=f"a{w}", asset="x", kind="test", path="p", run_id=str(w))
        results.put((w, "ok", store_mod.conflicts_retried(), time.monotonic() - t0))
    except BaseException as e:  # report, do not hang the parent or the other writers
        barrier.abort()
        results.put((w, f"{type(e).__name__}: {e}", -1, 0.0))


def test_eight_processes_write_the_lake_without_locks_losses_or_duplicates(tmp_path, lake_location):
    home = str(tmp_path)
    ctx = mp.get_context("spawn")  # a forked DuckDB with live threads is unsafe
    barrier, results = ctx.Barrier(WRITERS), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(home, lake_location, w, barrier, results)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    got = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    failures = [g for g in got if g[1] != "ok"]
    assert not failures  # no lock timeouts, no commit that gave up
    retried = sum(g[2] for g in got)
    assert retried > 0  # concurrent commits did collide, and each collision was retried to a commit

    store = _open(home, lake_location)
    per_cat = store.query_df("SELECT category, count(*) AS n, count(DISTINCT example_id) AS ids, "
                             "count(DISTINCT round) AS rounds, max(round) AS last FROM asset_rows GROUP BY 1")
    assert len(per_cat) == WRITERS
    assert (per_cat["n"] == ROWS).all() and (per_cat["ids"] == ROWS).all()  # replaced whole, never doubled
    assert (per_cat["rounds"] == 1).all() and (per_cat["last"] == ROUNDS - 1).all()  # the last round won
    lin = store.query_df("SELECT stage, count(*) AS n, count(DISTINCT (example_id, stage)) AS keys FROM lineage "
                         "GROUP BY 1 ORDER BY 1")
    assert lin.to_dict("records") == [{"stage": s, "n": WRITERS * ROWS, "keys": WRITERS * ROWS}
                                      for s in ("deduplicated", "judged")]  # a verdict for every row, once
    emb = store.query_df("SELECT count(*) AS n, count(DISTINCT text_hash) AS keys FROM embeddings").iloc[0]
    texts = len({(w + r + i) % 30 for w in range(WRITERS) for r in range(ROUNDS) for i in range(20)})
    assert (int(emb["n"]), int(emb["keys"])) == (texts, texts)
    parts = store.query_df("SELECT count(*) AS n FROM _distill_partitions").iloc[0]["n"]
    assert parts == WRITERS
    assert sorted(store.query_df("SELECT artifact_id FROM artifacts")["artifact_id"]) == [f"a{w}" for w in
                                                                                          range(WRITERS)]
    print(f"\n{WRITERS} writers x {ROUNDS} rounds: {retried} conflicting commits retried, "
          f"slowest writer {max(g[3] for g in got):.1f} s")


def test_lake_keys_hold_like_primary_keys(tmp_path, lake_location):
    store = _open(str(tmp_path), lake_location)
    assert store.is_lake and store.snapshot() is not None
    row = pd.DataFrame([{"failure_id": "f1", "category": "c", "input": "i", "status": "pending"}])
    store.insert_df("production_failures", row)
    with pytest.raises(duckdb.ConstraintException, match='Duplicate key "failure_id: f1"'):
        store.insert_df("production_failures", row)
    store.insert_df("production_failures", row.assign(status="resolved"), on_conflict="replace")
    store.insert_df("production_failures", row.assign(status="ignored"), on_conflict="ignore")
    assert store.query_df("SELECT status FROM production_failures")["status"].tolist() == ["resolved"]
    # views and every ledger table exist on a fresh lake, so the documented queries answer
    assert store.query_df("SELECT count(*) AS n FROM lineage_funnel")["n"].tolist() == [0]


def test_partition_writes_keep_columns_apart_after_a_column_was_added(tmp_path, lake_location):
    """Later partitions may carry a column the first did not (added by ALTER TABLE) and another column order;
    every value must land in its own column."""
    store = _open(str(tmp_path), lake_location)
    first = pd.DataFrame({"example_id": ["a1"], "category": "a", "score": [1.5]})
    later = pd.DataFrame({"verdict": ["kept"], "category": "b", "example_id": ["b1"], "score": [2.5]})
    for frame, cat in ((first, "a"), (later, "b")):
        store.transact(lambda conn, f=frame, c=cat: write_table(conn, "main", "scored", f, "category", [c]))
    with store.connect() as conn:
        got = conn.execute("SELECT example_id, category, score, verdict FROM scored ORDER BY 1").fetchall()
    assert got == [("a1", "a", 1.5, None), ("b1", "b", 2.5, "kept")]


@pytest.mark.parametrize("backend", ["duckdb", "ducklake"])
def test_an_empty_first_partition_does_not_type_the_verdict_column(backend, tmp_path, request):
    """Cross-category dedup can leave a stage of one category with no rows; when that partition is written first
    it creates the table, and the next partition's verdicts must still fit its columns."""
    where = request.getfixturevalue("lake_location") if backend == "ducklake" else {}
    store = _open(str(tmp_path), where)
    empty = annotate(pd.DataFrame({"example_id": pd.Series([], dtype=object), "category": "a"}), [], [], [])
    full = annotate(pd.DataFrame({"example_id": ["b1"], "category": "b"}), [True], [""], [{}])
    for frame, cat in ((empty, "a"), (full, "b")):
        store.transact(lambda conn, f=frame, c=cat: write_table(conn, "main", "judged_like", f, "category", [c]))
    with store.connect() as conn:
        assert conn.execute("SELECT example_id, verdict FROM judged_like").fetchall() == [("b1", "kept")]
