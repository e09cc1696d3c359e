"""Dedup of a finished table, recomputed independently of the `deduplicated` stage's annotations.

- exact: rows whose normalized instruction + response hash the same, with the stage's own key (lib/text.py
  normalize_series: casefold, punctuation deleted, whitespace collapsed), so a pair the stage kept is never flagged
  here as an exact duplicate;
- near: pairs whose embedding cosine is at or above the category's `filters.near_dup_threshold` (0.9): responses
  of at least `near_dup_min_tokens` tokens with each other; short responses (labels, bare numbers) only when
  equal, by their instructions, since identical labels of different messages are not duplicates.

The check on clean_dataset (checks/clean_dataset.py) needs both counts to be zero.
"""

from collections.abc import Callable

import numpy as np
import pandas as pd

from distill_assets.lib.contamination import training_texts
from distill_assets.lib.filters.dedup import exact_hashes
from distill_assets.lib.tasks import Category
from distill_assets.lib.text import normalize_series
from distill_assets.lib.tokenizer import count_tokens

Encode = Callable[[list[str]], np.ndarray]
PAIR_COLUMNS = ["example_a", "example_b", "cosine", "kind"]


def exact_duplicates(texts: pd.DataFrame) -> pd.DataFrame:
    """(example_a, example_b) for every row that repeats an earlier row's normalized instruction + response."""
    keys = exact_hashes(texts["instruction"], texts["response"])
    first: dict[str, str] = {}
    rows = []
    for ex, k in zip(texts["example_id"], keys):
        if k in first:
            rows.append({"example_a": first[k], "example_b": ex, "cosine": 1.0, "kind": "exact"})
        else:
            first[k] = ex
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def near_duplicate_pairs(vecs: np.ndarray, threshold: float, block: int = 2048, keep_top: int = 200,
                         groups: np.ndarray | None = None,
                         same: np.ndarray | None = None) -> tuple[int, list[tuple[int, int, float]]]:
    """(count, top pairs) of i < j with vecs[i]·vecs[j] >= threshold (the stage keeps an item only below the
    threshold), skipping pairs in the same `groups` entry (exact duplicates, counted separately) and, with
    `same`, counting only pairs whose `same` entries are equal; blocked matmul, so memory is block x n."""
    n = len(vecs)
    total, top = 0, []
    for s in range(0, n, block):
        sims = vecs[s:s + block] @ vecs.T
        ii, jj = np.nonzero(sims >= threshold)
        upper = jj > ii + s
        if groups is not None:
            upper &= groups[ii + s] != groups[jj]
        if same is not None:
            upper &= same[ii + s] == same[jj]
        ii, jj = ii[upper], jj[upper]
        total += len(ii)
        vals = sims[ii, jj]
        order = np.argsort(-vals)[:keep_top]
        top.extend((int(ii[o]) + s, int(jj[o]), float(vals[o])) for o in order)
        top = sorted(top, key=lambda p: -p[2])[:keep_top]
    return total, top


def find_duplicates(df: pd.DataFrame, category: Category, encode: Encode,
                    keep_top: int = 200) -> tuple[pd.DataFrame, int, int]:
    """(offending pairs, exact count, near count); near pairs exclude pairs already exact duplicates.

    The stage's rule, recomputed from the rows: responses of at least `near_dup_min_tokens` student
    tokens are compared with each other; shorter ones (labels, bare numbers) are duplicates only when their
    normalized responses are equal and their instructions are near-identical, since two rows answering
    "billing" to different messages are not duplicates."""
    # a conversation by its whole text, as the stage compares it (contamination.training_texts)
    texts = training_texts(df).pipe(lambda t: t.assign(response=t["dedup_text"]))
    exact = exact_duplicates(texts)
    if len(texts) < 2:
        return exact, len(exact), 0
    keys = exact_hashes(texts["instruction"], texts["response"])
    ntok = count_tokens(texts["response"].astype(str).tolist())
    is_long = (ntok >= category.filters.near_dup_min_tokens) & ~texts["short_answer"].to_numpy(dtype=bool)
    ids = np.asarray(texts["example_id"].tolist(), dtype=object)
    thr = category.filters.near_dup_threshold
    n_near, pairs = 0, []
    for mask, column, same in ((is_long, "response", None), (~is_long, "instruction", "response")):
        idx = np.flatnonzero(mask)
        if len(idx) < 2:
            continue
        vecs = encode(texts[column].iloc[idx].astype(str).tolist())
        same_key = normalize_series(texts["response"].iloc[idx]).to_numpy(dtype=object) if same else None
        n, found = near_duplicate_pairs(vecs, thr, keep_top=keep_top, groups=keys[idx], same=same_key)
        n_near += n
        pairs += [(idx[i], idx[j], c) for i, j, c in found]
    pairs = sorted(pairs, key=lambda p: -p[2])[:keep_top]
    near = [{"example_a": ids[i], "example_b": ids[j], "cosine": round(c, 4), "kind": "near"} for i, j, c in pairs]
    parts = [f for f in (exact.head(keep_top), pd.DataFrame(near, columns=PAIR_COLUMNS)) if not f.empty]
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=PAIR_COLUMNS)
    return out, len(exact), n_near
