"""The held-out gate: not worse than the promoted model; failures resolved once a promoted model passes them."""

from datetime import UTC, datetime, timedelta

import pandas as pd

from distill_assets.lib.production import intake, promotion, state
from distill_assets.lib.tasks import load_tasks


def _rows(version, scores: dict, source):
    return pd.DataFrame([{"adapter_version": version, "variant": promotion.MERGED, "example_id": k,
                          "source": source, "score": v, "task_status": "scored", "category": "math"}
                         for k, v in scores.items()])


def test_compare_versions_not_worse_passes_worse_fails():
    cand = pd.concat([_rows("b", {"h1": 0.8, "h2": 0.6}, "production_heldout"),
                      _rows("b", {"e1": 1.0, "e2": 0.0, "e3": 1.0}, "eval")])
    base = pd.concat([_rows("a", {"h1": 0.1, "h2": 0.2}, "production_heldout"),
                      _rows("a", {"e1": 1.0, "e2": 0.0, "e9": 1.0}, "eval")])
    ok = promotion.compare_versions(cand, base)
    assert ok["passed"] and ok["eval"]["n"] == 2 and ok["heldout"]["n"] == 2
    worse = promotion.compare_versions(cand.assign(score=cand["score"] * 0.5), base)
    assert not worse["passed"] and any("standard eval set" in r for r in worse["reasons"])
    assert promotion.compare_versions(cand.assign(score=cand["score"] * 0.9), base, tolerance=0.5)["passed"]
    assert promotion.compare_versions(cand, None)["passed"]  # nothing promoted yet


def test_nan_scores_are_unknown_not_zero():
    cand = _rows("b", {"e1": float("nan"), "e2": 1.0}, "eval")
    base = _rows("a", {"e1": 1.0, "e2": 1.0}, "eval")
    out = promotion.compare_versions(cand, base)
    assert out["passed"] and out["eval"]["n"] == 1


def _setup_versions(store, promoted_before: bool = True):

    t0 = datetime.now(UTC)
    with store.connect() as conn:
        conn.execute("INSERT INTO model_versions (adapter_version, promoted, reasons, decided_at) VALUES "
                     "('old', ?, '[]', ?), ('new', true, '[]', ?)", [promoted_before, t0 - timedelta(days=1), t0])


def test_decide_flips_a_regressing_candidate_and_resolves_only_on_promotion(store):
    tasks = load_tasks()
    recs = [{"category": "math", "input": f"failure {i}", "bad_output": "garbage", "expected": f"answer {i}"}
            for i in range(40)]
    intake.add_failures(store, recs)
    held = promotion.heldout_map(store)
    assert not held.empty
    _setup_versions(store)
    ids = held["example_id"].tolist()
    good = {k: 1.0 for k in ids}
    base_eval, cand_eval = {"e1": 1.0, "e2": 1.0}, {"e1": 1.0, "e2": 1.0}
    store.insert_df("eval_results", pd.concat([_rows("old", base_eval, "eval"),
                                               _rows("new", cand_eval, "eval"),
                                               _rows("new", good, "production_heldout")]))
    d = promotion.decide(store, "new", tasks)
    assert d["baseline_version"] == "old" and d["promoted"]
    assert d["comparison"]["heldout"]["n"] == len(ids)  # baseline scored from its production bad outputs
    resolved = promotion.resolve_heldout(store, d, tasks)
    promotion.record(store, d, len(resolved), "run1")
    assert set(resolved) == set(held["failure_id"])
    assert set(state.list_failures(store, status="resolved")["failure_id"]) == set(resolved)

    # a later candidate that is worse on the standard eval set is un-promoted, and resolves nothing
    with store.connect() as conn:
        conn.execute("INSERT INTO model_versions (adapter_version, promoted, reasons, decided_at) "
                     "VALUES ('worse', true, '[]', ?)", [datetime.now(UTC) + timedelta(seconds=5)])
    store.insert_df("eval_results", _rows("worse", {"e1": 0.0, "e2": 0.0}, "eval"))
    d2 = promotion.decide(store, "worse", tasks)
    assert d2["baseline_version"] == "new" and d2["gate_promoted"] and not d2["promoted"]
    promotion.record(store, d2, 0, "run2")
    mv = store.query_df("SELECT adapter_version, promoted, reasons FROM model_versions").set_index("adapter_version")
    assert not bool(mv.loc["worse", "promoted"]) and "worse than the promoted" in mv.loc["worse", "reasons"]
    assert promotion.promoted_baseline(store, "x") == "new"  # the previous model keeps serving
