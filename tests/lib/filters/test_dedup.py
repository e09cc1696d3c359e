import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distill_assets.defs.resources import embedded_embedder
from distill_assets.lib.filters.dedup import PriorIndex, dedup_partition, deduplicate
from distill_assets.lib.filters.near_dup import greedy_near_dup, greedy_reference
from distill_assets.lib.ledger import open_store
from distill_assets.lib.tasks import load_tasks
from distill_assets.lib.text import normalize_series


def unit(a):
    a = np.asarray(a, dtype=np.float64)
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


@st.composite
def vector_sets(draw):
    n = draw(st.integers(1, 120))
    d = draw(st.sampled_from([8, 32, 200]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    # planted copies, some exact, some right at the threshold's edge
    for _ in range(draw(st.integers(0, n))):
        i, j = rng.integers(0, n, 2)
        noise = draw(st.sampled_from([0.0, 0.05, 0.2, 0.45, 0.5, 0.55, 1.0]))
        X[j] = X[i] / np.linalg.norm(X[i]) + noise * rng.standard_normal(d) / np.sqrt(d)
    X = unit(X)
    m = draw(st.integers(0, 30))
    prior = unit(rng.standard_normal((m, d))) if m else None
    if m and n:
        X[: min(3, n, m)] = prior[: min(3, n, m)]  # rows identical to already-kept prior items
    thr = draw(st.sampled_from([0.5, 0.8, 0.9, 0.95, 0.999]))
    block = draw(st.sampled_from([1, 7, 32, 512]))
    return X, thr, prior, block


@settings(max_examples=150, deadline=None)
@given(vector_sets())
def test_blocked_equals_sequential_loop(args):
    X, thr, prior, block = args
    res = greedy_near_dup(X, thr, prior=prior, block=block, head_dims=4)
    assert np.array_equal(res.keep, greedy_reference(X, thr, prior))
    # every dropped row points at a kept row (prior or earlier) with similarity >= thr
    allv = np.concatenate([prior, X]) if prior is not None else X
    m = 0 if prior is None else len(prior)
    for i in np.flatnonzero(~res.keep):
        j = res.dup_of[i]
        assert j < m or (j - m < i and res.keep[j - m])
        assert res.similarity[i] >= thr
        assert abs(float(allv[j].astype(np.float64) @ X[i].astype(np.float64)) - res.similarity[i]) < 1e-9


def test_near_threshold_exact_and_bound_path():
    rng = np.random.default_rng(3)
    X = unit(rng.standard_normal((1200, 384)))
    for k, eps in enumerate([-1e-6, 1e-6, -1e-4, 1e-4] * 40):
        i, j = 2 * k, 2 * k + 1
        # Y = cos*X_i + sin*orthogonal so that cos(X_i, Y) = 0.9 + eps
        c = 0.9 + eps
        o = rng.standard_normal(384)
        o -= (o @ X[i].astype(np.float64)) * X[i]
        o /= np.linalg.norm(o)
        X[j] = (c * X[i].astype(np.float64) + np.sqrt(1 - c * c) * o).astype(np.float32)
    res = greedy_near_dup(X, 0.9, block=128)  # large enough for the PCA-bound path
    assert np.array_equal(res.keep, greedy_reference(X, 0.9))


def test_normalize():
    s = normalize_series(pd.Series(["Hello,   WORLD!\n", "hello world", None]))
    assert s.tolist() == ["hello world", "hello world", ""]


def frame(rows, cat="support"):
    return pd.DataFrame([{"example_id": e, "category": cat, "instruction": i, "response": r,
                          "created_at": f"2026-01-01T00:00:{k:02d}"} for k, (e, i, r) in enumerate(rows)])


def test_passes_with_synthetic_vectors():
    cat = load_tasks().category("support")
    df = frame([("a", "q1", "resp one"), ("b", "Q1!", "RESP one."), ("c", "q3", "resp three"),
                ("d", "q4", "label"), ("e", "q4 again", "label"), ("f", "q6", "label"), ("g", "q4", "other")])
    rng = np.random.default_rng(0)
    rv = unit(rng.standard_normal((7, 16)))
    rv[2] = rv[0]  # c: near-duplicate response of a
    iv = unit(rng.standard_normal((7, 16)))
    iv[4] = iv[3]  # e: same label and same instruction meaning as d
    iv[6] = iv[3]  # g: similar instruction, different response: not a duplicate
    is_long = np.array([True, True, True, False, False, False, False])
    out = dedup_partition(df, cat, rv, iv, is_long, PriorIndex())
    got = dict(zip(out["example_id"], zip(out["reason"], out["duplicate_of"])))
    assert got["b"] == ("exact_duplicate", "a")
    assert got["c"] == ("near_duplicate", "a")
    assert got["e"] == ("near_duplicate_instruction", "d")
    assert out.set_index("example_id").loc[["a", "d", "f", "g"], "keep"].all()


@pytest.fixture(scope="module")
def embedder():
    return embedded_embedder()


def test_incremental_across_partitions(tmp_path, embedder):
    store = open_store(str(tmp_path / "d.duckdb"))
    support, math = load_tasks().category("support"), load_tasks().category("math")
    long = ("To track your order, open the Orders page in your account and click the tracking number; the "
            "carrier's page shows where the parcel is and when it will arrive.")
    para = ("To track your order, open the Orders page in your account and click on the tracking number; the "
            "carrier page shows where your parcel is and when it will arrive.")
    other = ("Refunds go back to the original payment method within five business days after the returned item "
             "reaches our warehouse and passes inspection.")
    a = frame([("s1", "Where is my order?", long), ("s2", "Refund timing?", other)], "support")
    out_a, _ = deduplicate(a, support, store, embedder)
    assert out_a["keep"].all()
    b = frame([("m1", "How can I track a parcel?", para), ("m2", "Something new", other + " Thanks!"),
               ("m3", "Unrelated", "Multiply both sides by three and subtract four to get x equals five, "
                                   "which you can check by substituting it back.")], "math")
    out_b, stats = deduplicate(b, math, store, embedder)
    res = dict(zip(out_b["example_id"], zip(out_b["keep"], out_b["duplicate_of"])))
    assert res["m1"] == (False, "s1") and res["m2"] == (False, "s2") and res["m3"][0]
    assert stats["prior_kept_other_partitions"] == 2
    ev = json.loads(out_b.set_index("example_id").loc["m1", "evidence"])
    assert ev["duplicate_category"] == "support" and ev["similarity"] >= 0.9
    # re-materializing math replaces only its own entries; support still wins
    out_b2, _ = deduplicate(b, math, store, embedder)
    assert out_b2["keep"].tolist() == out_b["keep"].tolist()
    idx = store.query_df("SELECT category, count(*) n FROM dedup_index GROUP BY 1 ORDER BY 1")
    assert idx.set_index("category")["n"].to_dict() == {"math": 1, "support": 2}
    # vectors are cached, not recomputed: the cache holds each text once
    n_vec = store.query_df("SELECT count(*) n FROM embeddings")["n"].iloc[0]
    assert n_vec == 5
