import numpy as np
import pandas as pd

from distill_assets.lib.filters.balance import balance_frame, bucket_labels, length_bucket
from distill_assets.lib.tasks import Balance, load_tasks


def cat(**bal):
    c = load_tasks().category("support")
    return c.model_copy(update={"balance": Balance(**{"length_buckets": [10, 100], **bal})})


def frame(n, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "example_id": [f"e{i}" for i in range(n)],
        "difficulty": rng.choice(["easy", "medium", "hard"], n, p=[0.7, 0.2, 0.1]),
        "method": rng.choice(["response", "self_instruct"], n),
        "judge_score": rng.integers(3, 6, n).astype(float),
        "response": ["x"] * n,
    }), rng.integers(1, 300, n)


def test_buckets():
    assert bucket_labels([10, 100]) == ["0-9", "10-99", "100+"]
    assert length_bucket(np.array([0, 9, 10, 99, 100, 5000]), [10, 100]).tolist() == \
        ["0-9", "0-9", "10-99", "10-99", "100+", "100+"]


def test_caps_hold_and_reasons():
    df, tok = frame(200)
    out, cov = balance_frame(df, cat(max_per_difficulty=30, max_per_method=50, max_total=80), tok)
    k = out[out["keep"]]
    assert len(k) <= 80 and k["difficulty"].value_counts().max() <= 30 and k["method"].value_counts().max() <= 50
    assert set(out.loc[~out["keep"], "reason"]) <= {"cap_total", "cap_per_difficulty", "cap_per_method"}
    # easy dominates the input but the cap spreads the kept rows
    assert 25 <= k["difficulty"].value_counts()["easy"] <= 30


def test_no_caps_keeps_all_and_is_deterministic():
    df, tok = frame(50)
    out, _ = balance_frame(df, cat(), tok)
    assert out["keep"].all()
    a, _ = balance_frame(df, cat(max_total=20), tok)
    perm = np.random.default_rng(1).permutation(50)
    b, _ = balance_frame(df.iloc[perm].reset_index(drop=True), cat(max_total=20), tok[perm])
    assert sorted(a.loc[a["keep"], "example_id"]) == sorted(b.loc[b["keep"], "example_id"])


def test_prefers_higher_judge_score():
    df = pd.DataFrame({"example_id": ["a", "b", "c", "d"], "difficulty": "easy", "method": "response",
                       "judge_score": [3.0, 5.0, 4.0, 5.0], "response": "x"})
    out, _ = balance_frame(df, cat(max_total=2), np.array([5, 5, 5, 5]))
    assert sorted(out.loc[out["keep"], "example_id"]) == ["b", "d"]


def test_coverage_flags_under_represented():
    df, tok = frame(100)
    df["difficulty"] = ["easy"] * 80 + ["medium"] * 15 + ["hard"] * 5
    out, cov = balance_frame(df, cat(min_bucket_share=0.1), tok)
    under = {(u["dimension"], u["value"]) for u in cov["under_represented"]}
    assert ("difficulty", "hard") in under and ("difficulty", "easy") not in under
    # evol_instruct is enabled for support but absent here
    assert ("method", "evol_instruct") in under
    assert set(cov["coverage"]["dimension"]) == {"difficulty", "length_bucket", "method"}
