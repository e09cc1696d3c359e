"""The held-out split of production failures: decided once, at intake, by prompt.

Whether a failure is held out for evaluation is decided by a hash of its category and prompt (`split_key`), so
every failure with the same prompt is on the same side; a failure that overlaps a stored failure, an eval item or
a seed joins that side, so the blocking contamination checks never see a seed/eval pair made from failures.
"""

from __future__ import annotations

import hashlib

import pandas as pd

from distill_assets.lib.contamination import build_index
from distill_assets.lib.ids import content_hash
from distill_assets.lib.production import HELD_OUT, HELDOUT_SPLIT, PENDING, TRAIN_SPLIT
from distill_assets.lib.records import load_eval_file, load_seed_file
from distill_assets.lib.shared_text import SharedText, find_shared_text
from distill_assets.lib.tasks import Category, TaskFile


def split_key(category: str, input_text: str) -> str:
    """What the held-out split is decided on: the prompt, not the failure. The same question reported twice
    with different bad outputs is two failures, and both must land on the same side: one seed and one eval row
    with the same prompt would contaminate training (and the blocking seed check would stop the retrain)."""
    return "s_" + content_hash("failure-split", category, input_text.strip())


def is_held_out(key: str, fraction: float) -> bool:
    """Deterministic held-out choice by hash of `split_key(category, input)`: the same prompt is always on
    the same side of the split."""
    if fraction <= 0:
        return False
    bucket = int(hashlib.sha256(("heldout:" + key).encode()).hexdigest()[:12], 16) / float(16 ** 12)
    return bucket < fraction


def _set_side(new: pd.DataFrame, idx, split: str) -> None:
    new.at[idx, "split"] = split
    new.at[idx, "status"] = HELD_OUT if split == HELDOUT_SPLIT else PENDING


def _overlap_pairs(rows: pd.DataFrame, anchors: pd.DataFrame, cfg, shared: SharedText) -> set[tuple[int, int]]:
    """(i, j): row i of `rows` and row j of `anchors` would trip the seed contamination check's n-gram rules
    if one of them were a seed and the other an eval row, in either role. Texts are the prompt and the
    expected answer (a failure's seed and eval row both carry them: prompt and reference_response); the
    category's shared template and frequent n-grams are ignored, as the check ignores them."""
    def frame(df: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"eval_id": [str(k) for k in range(len(df))],
                             "prompt": df["prompt"].fillna("").astype(str).to_numpy(),
                             "reference_response": df["reference_response"].fillna("").astype(str).to_numpy()})

    def hits(evals: pd.DataFrame, queries: pd.DataFrame) -> set[tuple[int, int]]:
        """(query row, eval row) pairs the check's rules match with `queries` as the training side."""
        out: set[tuple[int, int]] = set()
        for n, fields in ((cfg.ngram_long, cfg.long_eval_fields), (cfg.ngram_short, cfg.short_eval_fields)):
            idx = build_index(evals, n, fields, cfg.min_ngram_words, shared)
            for q, (p, r) in enumerate(zip(queries["prompt"], queries["reference_response"])):
                for text in (p, r):
                    out.update((q, int(e)) for e, _ in idx.matches(text))
        return out

    a, r = frame(anchors), frame(rows)
    if a.empty or r.empty:
        return set()
    return hits(a, r) | {(i, j) for j, i in hits(r, a)}


def _split_anchors(conn, category: Category) -> pd.DataFrame:
    """What a new failure of the category must not straddle: stored failures (their split), the eval file (its
    items are eval rows: held-out side) and the seed file (its items are seeds: training side)."""
    stored = conn.execute(
        "SELECT input, expected, split FROM production_failures WHERE category = ? ORDER BY ingest_seq",
        [category.name]).df()
    parts = [pd.DataFrame({"prompt": stored["input"], "reference_response": stored["expected"],
                           "split": stored["split"], "source": "failure"})]
    for load, side in ((load_eval_file, HELDOUT_SPLIT), (load_seed_file, TRAIN_SPLIT)):
        try:
            df = load(category.eval if side == HELDOUT_SPLIT else category.seeds, category)
        except Exception:  # a broken task file is reported by its own assets; the split still holds
            continue
        parts.append(pd.DataFrame({"prompt": df["prompt"], "reference_response": df["reference_response"],
                                   "split": side, "source": "eval" if side == HELDOUT_SPLIT else "seed"}))
    return pd.concat(parts, ignore_index=True)


def assign_splits(conn, new: pd.DataFrame, tasks: TaskFile) -> None:
    """Final split of new failures, in ingest order, so that no seed/eval pair the blocking contamination
    checks would flag is ever made from the failures:

    1. a prompt already stored keeps its split (rows ingested under an older rule or fraction decide);
    2. a failure that overlaps, by the category's n-gram contamination rules, a stored failure, an eval-file item,
       a seed-file item or an earlier failure of this batch joins that side (held-out wins if it touches both:
       a held-out prompt must never become a seed);
    3. otherwise the hash of its prompt decides (set in `_normalize`), which gives the configured fraction.

    Paraphrases that only the embedding rule would catch are not clustered here (no encoder at intake); the
    blocking seed check still catches them."""
    if new.empty:
        return
    stored = conn.execute(
        """SELECT category, input, min(split) AS split FROM production_failures
           WHERE list_contains(?, input) GROUP BY category, input""",
        [sorted(set(new["input"]))],
    ).fetchall()
    known = {(c, i): sp for c, i, sp in stored}
    for cat, group in new.groupby("category", sort=False):
        anchors = _split_anchors(conn, tasks.category(cat))
        rows = pd.DataFrame({"prompt": group["input"].to_numpy(), "reference_response": group["expected"].to_numpy()})
        cfg = tasks.category(cat).contamination
        # what the checks ignore (contamination.category_shared_text), from the task files read above
        shared = find_shared_text(anchors[anchors["source"] == "seed"], anchors[anchors["source"] == "eval"], cfg)
        anchor_sides: dict[int, set[str]] = {}
        for i, j in _overlap_pairs(rows, anchors, cfg, shared):
            anchor_sides.setdefault(i, set()).add(anchors.at[j, "split"])
        peers: dict[int, set[int]] = {}
        for i, j in _overlap_pairs(rows, rows, cfg, shared):
            if i != j:
                peers.setdefault(i, set()).add(j)
                peers.setdefault(j, set()).add(i)
        sides: list[str] = []
        for pos, idx in enumerate(group.index):
            exact = known.get((cat, new.at[idx, "input"]))
            touched = set(anchor_sides.get(pos, ())) | {sides[j] for j in peers.get(pos, ()) if j < pos}
            side = exact or (HELDOUT_SPLIT if HELDOUT_SPLIT in touched else TRAIN_SPLIT if touched else
                             new.at[idx, "split"])
            if side != new.at[idx, "split"]:
                _set_side(new, idx, side)
            sides.append(side)
