"""Per-category backfills touch only their partitions, and parallel partition runs in several processes share
one DuckDB file without lock failures."""

import multiprocessing as mp

import dagster as dg
import pandas as pd

from distill_assets.defs.eval_set import eval_set
from distill_assets.defs.seeds import seed_prompts
from distill_assets.lib.ledger import open_io_manager, open_store
from distill_assets.lib.production import intake, state
from distill_assets.lib.tasks import load_tasks


def _resources(db):
    return {"store": open_store(db), "io_manager": open_io_manager(db)}


def _materialize(db, cats):
    for c in cats:
        res = dg.materialize([seed_prompts, eval_set], partition_key=c, resources=_resources(db))
        assert res.success


def _snapshot(store, table):
    df = store.query_df(f"SELECT * FROM {table}")
    return {c: g.sort_values(g.columns[0]).reset_index(drop=True) for c, g in df.groupby("category")}


def test_backfill_of_two_categories_leaves_the_others_untouched(db_path, store):
    cats = load_tasks().names
    assert len(cats) >= 4
    _materialize(db_path, cats)
    before_seeds, before_eval = _snapshot(store, "seed_prompts"), _snapshot(store, "eval_set")
    recs = [{"category": c, "input": f"{c}: production question {i}?", "bad_output": "bad"}
            for c in cats for i in range(10)]
    intake.add_failures(store, recs)
    chosen, others = cats[:2], cats[2:]
    _materialize(db_path, chosen)
    after_seeds, after_eval = _snapshot(store, "seed_prompts"), _snapshot(store, "eval_set")
    for c in others:
        pd.testing.assert_frame_equal(before_seeds[c], after_seeds[c])
        pd.testing.assert_frame_equal(before_eval[c], after_eval[c])
        assert set(state.list_failures(store, category=c)["status"]) <= {"pending", "held_out"}
    for c in chosen:
        prod = after_seeds[c][after_seeds[c]["source"] == "production"]
        fails = state.list_failures(store, category=c)
        train, held = fails[fails["split"] == "train"], fails[fails["split"] == "heldout"]
        assert set(prod["prompt"]) == set(train["input"])
        assert (train["status"] == "in_training").all()
        assert set(held["input"]).isdisjoint(set(after_seeds[c]["prompt"]))  # held out never a seed
        assert set(held["input"]) <= set(after_eval[c]["prompt"])  # ... and always an eval row


def _worker(db, cat, q):
    try:
        _materialize(db, [cat])
        q.put((cat, "ok"))
    except BaseException as e:  # report, do not hang the parent
        q.put((cat, f"{type(e).__name__}: {e}"))


def test_parallel_partitions_in_four_processes_share_one_duckdb(db_path, store):
    cats = load_tasks().names
    intake.add_failures(store, [{"category": c, "input": f"{c} q{i}", "bad_output": "x"}
                                for c in cats for i in range(5)])
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(db_path, c, q)) for c in cats]
    for p in procs:
        p.start()
    results = dict(q.get(timeout=600) for _ in procs)
    for p in procs:
        p.join(60)
    assert results == {c: "ok" for c in cats}
    seeds = store.query_df("SELECT category, count(*) AS n FROM seed_prompts GROUP BY category")
    assert set(seeds["category"]) == set(cats)
    assert set(state.list_failures(store)["status"]) <= {"in_training", "held_out"}
