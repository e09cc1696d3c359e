"""Dedup, recomputed independently of the `deduplicated` stage's annotations.

- exact: rows whose normalized instruction + response (lower-case, no punctuation, collapsed whitespace) hash
  the same;
- near: pairs whose embedding cosine is at or above the category's `filters.near_dup_threshold` (0.9): responses
  of at least `near_dup_min_tokens` tokens with each other; short responses (labels, bare numbers) only when
  equal, by their instructions, since identical labels of different messages are not duplicates.

Both counts must be zero; the top offending pairs go in the metadata.
"""

import hashlib
import json
from typing import Any, Callable

import dagster as dg
import numpy as np
import pandas as pd

from checks.contamination import encoder, normalize_text, training_texts
from distill_assets.partitions import CATEGORY
from distill_assets.tasks import Category, load_tasks
from resources.embedder import EmbedderResource
from resources.store import DuckDBStore

Encode = Callable[[list[str]], np.ndarray]
PAIR_COLUMNS = ["example_a", "example_b", "cosine", "kind"]


def exact_key(instruction: str, response: str) -> str:
    return hashlib.sha256((normalize_text(instruction) + "\x1f" + normalize_text(response)).encode()).hexdigest()[:20]


def exact_duplicates(texts: pd.DataFrame) -> pd.DataFrame:
    """(example_a, example_b) for every row that repeats an earlier row's normalized instruction + response."""
    keys = [exact_key(i, r) for i, r in zip(texts["instruction"], texts["response"])]
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
    """(count, top pairs) of i < j with vecs[i]·vecs[j] >= threshold (the guide keeps an item only below the
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

    The rule is the guide's, recomputed from the rows: responses of at least `near_dup_min_tokens` student
    tokens are compared with each other; shorter ones (labels, bare numbers) are duplicates only when their
    normalized responses are equal and their instructions are near-identical, since two rows answering
    "billing" to different messages are not duplicates."""
    from distill_assets.filters.quality import count_tokens

    texts = training_texts(df)
    exact = exact_duplicates(texts)
    if len(texts) < 2:
        return exact, len(exact), 0
    keys = np.array([exact_key(i, r) for i, r in zip(texts["instruction"], texts["response"])], dtype=object)
    ntok = count_tokens(texts["response"].astype(str).tolist())
    is_long = ntok >= category.filters.near_dup_min_tokens
    ids = np.asarray(texts["example_id"].tolist(), dtype=object)
    thr = category.filters.near_dup_threshold
    n_near, pairs = 0, []
    for mask, column, same in ((is_long, "response", None), (~is_long, "instruction", "response")):
        idx = np.flatnonzero(mask)
        if len(idx) < 2:
            continue
        vecs = encode(texts[column].iloc[idx].astype(str).tolist())
        same_key = (np.array([normalize_text(r) for r in texts["response"].iloc[idx]], dtype=object)
                    if same else None)
        n, found = near_duplicate_pairs(vecs, thr, keep_top=keep_top, groups=keys[idx], same=same_key)
        n_near += n
        pairs += [(idx[i], idx[j], c) for i, j, c in found]
    pairs = sorted(pairs, key=lambda p: -p[2])[:keep_top]
    near = [{"example_a": ids[i], "example_b": ids[j], "cosine": round(c, 4), "kind": "near"} for i, j, c in pairs]
    parts = [f for f in (exact.head(keep_top), pd.DataFrame(near, columns=PAIR_COLUMNS)) if not f.empty]
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=PAIR_COLUMNS)
    return out, len(exact), n_near


def dedup_check_result(df: pd.DataFrame, category: Category, encode: Encode, top: int = 20) -> dg.AssetCheckResult:
    pairs, n_exact, n_near = find_duplicates(df, category, encode)
    texts = training_texts(df).set_index("example_id")
    shown = pairs.sort_values("cosine", ascending=False).head(top).copy()
    for side in ("a", "b"):
        shown[f"response_{side}"] = shown[f"example_{side}"].map(
            lambda e: str(texts["response"].get(e, ""))[:80].replace("\n", " "))
    md: dict[str, Any] = {
        "rows": dg.MetadataValue.int(int(len(df))),
        "exact_duplicates": dg.MetadataValue.int(n_exact),
        "near_duplicate_pairs": dg.MetadataValue.int(n_near),
        "near_dup_threshold": dg.MetadataValue.float(float(category.filters.near_dup_threshold)),
        "embedded_text": dg.MetadataValue.text(
            f"response (>= {category.filters.near_dup_min_tokens} tokens); instruction among equal short responses"),
        "top_pairs": dg.MetadataValue.md(shown.to_markdown(index=False) if not shown.empty else "(none)"),
        "pairs": dg.MetadataValue.json(json.loads(shown[PAIR_COLUMNS].to_json(orient="records"))),
    }
    ok = n_exact == 0 and n_near == 0
    return dg.AssetCheckResult(
        passed=ok, severity=dg.AssetCheckSeverity.ERROR, metadata=md,
        description=("no duplicates" if ok else f"{n_exact} exact duplicate(s) and {n_near} near-duplicate pair(s) "
                                                f"above cosine {category.filters.near_dup_threshold}"))


def build_dedup_checks(partitions_def: dg.PartitionsDefinition | None = CATEGORY,
                       clean_key: str = "clean_dataset") -> list[dg.AssetChecksDefinition]:
    @dg.asset_check(asset=clean_key, name="no_duplicates", blocking=True, partitions_def=partitions_def,
                    description="Zero exact duplicates (normalized instruction+response) and zero pairs above the "
                                "category's near_dup_threshold, recomputed from the rows themselves.")
    def clean_dedup(context: dg.AssetCheckExecutionContext, clean: pd.DataFrame, store: DuckDBStore,
                    embedder: EmbedderResource) -> dg.AssetCheckResult:
        category = load_tasks().category(context.partition_key)
        return dedup_check_result(clean, category, encoder(embedder, store))

    return [clean_dedup]


asset_checks = build_dedup_checks()
