"""`balanced` (filter 5 of 5): diversity balancing over the verified rows of one category.

Caps come from `Category.balance`: max_per_difficulty, max_per_length_bucket (student-token buckets with edges
`length_buckets`), max_per_method and max_total. Selection is deterministic and spreads across strata: rows are
ranked inside their (difficulty, length bucket, method) stratum by judge score (higher first, when a
`judge_score` column exists) then by a stable hash of example_id, and taken round-robin over strata (rank 0 of
every stratum, then rank 1, ...) while no cap is full. A dropped row names the cap it hit.
"""

import hashlib

import numpy as np
import pandas as pd

from distill_assets.lib.stages import annotate
from distill_assets.lib.tasks import Category
from distill_assets.lib.tokenizer import count_tokens

DIFFICULTIES = ["easy", "medium", "hard"]


def bucket_labels(edges: list[int]) -> list[str]:
    edges = sorted(edges)
    labels, lo = [], 0
    for e in edges:
        labels.append(f"{lo}-{e - 1}")
        lo = e
    labels.append(f"{lo}+")
    return labels


def length_bucket(tokens: np.ndarray, edges: list[int]) -> np.ndarray:
    labels = np.array(bucket_labels(edges), dtype=object)
    return labels[np.searchsorted(np.array(sorted(edges)), np.asarray(tokens), side="right")]


def stable_rank_key(ids: pd.Series) -> np.ndarray:
    return np.array([int(hashlib.sha256(str(i).encode()).hexdigest()[:15], 16) for i in ids], dtype=np.int64)


def balance_frame(df: pd.DataFrame, category: Category, tokens: np.ndarray) -> tuple[pd.DataFrame, dict]:
    """Annotated frame (with length_bucket, response_tokens) and the coverage report."""
    b = category.balance
    n = len(df)
    out = df.copy()
    out["response_tokens"] = np.asarray(tokens, dtype=np.int64)
    out["length_bucket"] = length_bucket(tokens, b.length_buckets) if n else pd.Series(dtype=object)
    diff = out["difficulty"].fillna("medium").astype(str) if "difficulty" in out.columns else pd.Series(
        ["medium"] * n, index=out.index)
    meth = out["method"].fillna("unknown").astype(str) if "method" in out.columns else pd.Series(
        ["unknown"] * n, index=out.index)
    score = pd.to_numeric(out["judge_score"], errors="coerce").fillna(-np.inf).to_numpy() \
        if "judge_score" in out.columns else np.zeros(n)
    if n == 0:
        annotated = annotate(out, [], [], [])
        return annotated, coverage(annotated, category)
    h = stable_rank_key(out["example_id"])
    work = pd.DataFrame({"d": diff.to_numpy(), "l": out["length_bucket"].to_numpy(), "m": meth.to_numpy(),
                         "neg_score": -score, "h": h})
    work["rank"] = work.sort_values(["neg_score", "h"]).groupby(["d", "l", "m"], sort=False).cumcount() \
        .reindex(work.index)
    order = work.sort_values(["rank", "neg_score", "h"], kind="mergesort").index.to_numpy()

    caps = [("max_total", None, b.max_total), ("max_per_difficulty", "d", b.max_per_difficulty),
            ("max_per_length_bucket", "l", b.max_per_length_bucket), ("max_per_method", "m", b.max_per_method)]
    counts: dict[tuple, int] = {}
    total = 0
    keep = np.zeros(n, dtype=bool)
    reason = np.array([""] * n, dtype=object)
    evidence: list[dict] = [{} for _ in range(n)]
    for i in order:
        row = work.loc[i]
        base = {"difficulty": row["d"], "length_bucket": row["l"], "method": row["m"],
                "stratum_rank": int(row["rank"]), "judge_score": None if np.isinf(score[i]) or "judge_score"
                not in out.columns else float(score[i])}
        hit = None
        for name, col, cap in caps:
            if cap is None:
                continue
            used = total if col is None else counts.get((col, row[col]), 0)
            if used >= cap:
                hit = (name, col, cap)
                break
        if hit:
            reason[i] = "cap_" + hit[0].replace("max_", "")
            evidence[i] = {**base, "cap": hit[0], "limit": hit[2]}
            continue
        keep[i] = True
        total += 1
        for col in ("d", "l", "m"):
            counts[(col, row[col])] = counts.get((col, row[col]), 0) + 1
        evidence[i] = base
    annotated = annotate(out, keep, reason, evidence)
    return annotated, coverage(annotated, category)


def coverage(annotated: pd.DataFrame, category: Category) -> dict:
    """Per difficulty / length bucket / method: rows in, kept, share of kept; and the under-represented ones."""
    b = category.balance
    expected = {
        "difficulty": DIFFICULTIES,
        "length_bucket": bucket_labels(b.length_buckets),
        "method": list(category.methods.enabled().keys()),
    }
    k = annotated[annotated["keep"]] if len(annotated) else annotated
    total = max(len(k), 1)
    tables, under = [], []
    for dim, values in expected.items():
        col = annotated[dim].fillna("medium" if dim == "difficulty" else "unknown").astype(str) \
            if dim in annotated.columns else pd.Series([], dtype=object)
        kcol = col[annotated["keep"].to_numpy(dtype=bool)] if len(col) else col
        seen = list(dict.fromkeys(values + sorted(set(col) - set(values))))
        for v in seen:
            rows_in, n_kept = int((col == v).sum()), int((kcol == v).sum())
            share = n_kept / total
            tables.append({"dimension": dim, "value": v, "rows_in": rows_in, "kept": n_kept,
                           "share": round(share, 4)})
            if v in values and share < b.min_bucket_share:
                under.append({"dimension": dim, "value": v, "kept": n_kept, "share": round(share, 4)})
    return {"coverage": pd.DataFrame(tables), "under_represented": under, "kept": int(len(k))}


def response_tokens(df: pd.DataFrame, tokenizer=None) -> np.ndarray:
    if "response_tokens" in df.columns and df["response_tokens"].notna().all():
        return df["response_tokens"].astype(np.int64).to_numpy()
    return count_tokens(df["response"].fillna("").astype(str).tolist(), tokenizer)
