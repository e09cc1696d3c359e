import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from distill_assets.lib.filters.dedup import dedup_partition
from distill_assets.lib.filters.dedup_check import exact_duplicates, find_duplicates, near_duplicate_pairs
from distill_assets.lib.text import normalize_words
from tests.checks.helpers import category, clean_rows


def _orthogonal(texts: list[str]) -> np.ndarray:
    """One unit vector per text, all orthogonal: no pair is a near duplicate."""
    return np.eye(len(texts), max(len(texts), 2), dtype=np.float32)


def _stage_frame(pairs: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame([{"example_id": f"e{k:03d}", "category": "support", "instruction": i, "response": r,
                          "created_at": f"2026-01-01T00:00:{k:02d}"} for k, (i, r) in enumerate(pairs)])


def _texts(df: pd.DataFrame) -> pd.DataFrame:
    return df[["example_id", "instruction", "response"]].astype(str)


def _stage_exact_drops(df: pd.DataFrame) -> set[str]:
    n = len(df)
    vecs = _orthogonal(["x"] * n)
    out = dedup_partition(df, category(), vecs, vecs, np.zeros(n, dtype=bool))
    return set(out.loc[out["reason"] == "exact_duplicate", "example_id"])


def test_a_pair_the_stage_keeps_is_not_flagged_by_the_check():
    # the stage deletes punctuation: "state-of-the-art" is one word there, four once punctuation became spaces
    # (the key the check used before), which made these two rows one
    pairs = [("Is this state-of-the-art?", "yes"), ("Is this state of the art?", "yes")]
    assert normalize_words(pairs[0][0]) == normalize_words(pairs[1][0])
    df = _stage_frame(pairs)
    assert _stage_exact_drops(df) == set()
    assert exact_duplicates(_texts(df)).empty
    found, n_exact, n_near = find_duplicates(clean_rows(pairs), category(), _orthogonal)
    assert (n_exact, n_near) == (0, 0) and found.empty


def test_exact_pairs_after_normalization_are_flagged_by_both():
    pairs = [("Where is my ORDER?", "It shipped."), ("where is my order", "it   shipped"), ("Other?", "No.")]
    df = _stage_frame(pairs)
    assert _stage_exact_drops(df) == {"e001"}
    assert exact_duplicates(_texts(df))[["example_a", "example_b"]].values.tolist() == [["e000", "e001"]]


_TEXT = st.text(alphabet=st.sampled_from(list("aAbß- _'!.,\t\n")), max_size=8)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_TEXT, _TEXT), min_size=1, max_size=12))
def test_the_check_finds_exactly_the_exact_duplicates_the_stage_drops(pairs):
    df = _stage_frame(pairs)
    assert set(exact_duplicates(_texts(df))["example_b"]) == _stage_exact_drops(df)


def test_blocked_pairs_equal_the_full_matrix():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(300, 16)).astype(np.float32)
    v[50] = v[7] + 0.01
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    full = v @ v.T
    iu = np.triu_indices(len(v), 1)
    want = int((full[iu] > 0.6).sum())
    n, top = near_duplicate_pairs(v, 0.6, block=64, keep_top=10_000)
    assert n == want and len(top) == want and (7, 50) in {(i, j) for i, j, _ in top}
