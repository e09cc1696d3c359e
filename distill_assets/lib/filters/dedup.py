"""`deduplicated` (filter 2 of 5): exact and near-duplicate removal, exact, vectorized and incremental.

Order. Rows are processed in one deterministic global order, (created_at, example_id), and the first one wins.
Across partitions, whatever is already kept in the side table `dedup_index` (other categories, materialized
earlier) wins over the partition being materialized: a new partition or a backfill is deduplicated against
everything kept before it, and re-materializing a partition first drops its own old index entries. The index
is read, the partition resolved and the index rewritten in one store transaction, so two partitions
materialized at the same time queue instead of missing each other.

Passes (each row is in exactly one near-dup pass, so the passes cannot disagree):
  1. exact: hash of normalized (lib/text.py: casefold, punctuation deleted, whitespace collapsed)
     instruction + response;
  2. near_duplicate: responses of at least `filters.near_dup_min_tokens` tokens, cosine of all-MiniLM-L6-v2
     embeddings >= `filters.near_dup_threshold`;
  3. near_duplicate_instruction: shorter responses (labels, bare numbers, which are identical across distinct
     prompts) are compared on the instruction embedding, only against rows with the same normalized response
     ("semantically identical instructions with the same response"). Long identical responses are
     already caught by pass 2 (their cosine is ~1).

Near-dup selection (near_dup.py) equals the plain sequential loop exactly (item i kept iff its max cosine to all
previously KEPT items < threshold).
"""

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from distill_assets.lib.contamination import training_texts
from distill_assets.lib.filters.near_dup import GreedyResult, greedy_near_dup
from distill_assets.lib.stages import annotate
from distill_assets.lib.tasks import Category
from distill_assets.lib.text import normalize_series
from distill_assets.lib.tokenizer import count_tokens
from resources.clock import utcnow
from resources.embedder import EmbedderResource, text_hash
from resources.store import DuckDBStore, insert_df, table_exists

# ---------------------------------------------------------------- hashes and order

def _hash(values) -> list[str]:
    return [hashlib.sha256(v.encode("utf-8")).hexdigest()[:20] for v in values]


def exact_hashes(instructions: pd.Series, responses: pd.Series) -> np.ndarray:
    """The exact-duplicate key of each row: hash of normalized instruction + normalized response."""
    return np.array(_hash(normalize_series(instructions) + "\x1f" + normalize_series(responses)), dtype=object)


def global_order(df: pd.DataFrame) -> pd.DataFrame:
    """The deterministic processing order: created_at, then example_id."""
    key = df.assign(_c=df["created_at"].astype(str) if "created_at" in df.columns else "",
                    _e=df["example_id"].astype(str))
    return key.sort_values(["_c", "_e"], kind="mergesort").drop(columns=["_c", "_e"])


# ---------------------------------------------------------------- the partition resolver

@dataclass
class PriorIndex:
    """Kept entries of other partitions: the rows a new partition is deduplicated against."""
    entries: pd.DataFrame = field(default_factory=pd.DataFrame)  # dedup_index rows
    vectors: np.ndarray | None = None  # aligned with entries (float32, n x d)


def dedup_partition(df: pd.DataFrame, category: Category, response_vecs: np.ndarray,
                    instruction_vecs: np.ndarray, is_long: np.ndarray, prior: PriorIndex | None = None,
                    block: int = 512) -> pd.DataFrame:
    """Annotate `df` (already in global order; vectors aligned with its rows). Returns the annotated frame
    with columns duplicate_of, dup_similarity, dedup_pass, exact_hash, response_norm_hash."""
    thr = category.filters.near_dup_threshold
    n = len(df)
    prior = prior or PriorIndex()
    pe = prior.entries if not prior.entries.empty else pd.DataFrame(
        columns=["example_id", "category", "kind", "exact_hash", "response_norm_hash"])
    pv = prior.vectors if prior.vectors is not None else np.zeros((0, response_vecs.shape[1] if n else 384),
                                                                   dtype=np.float32)
    exact_hash = exact_hashes(df["instruction"], df["response"])
    resp_hash = np.array(_hash(normalize_series(df["response"])), dtype=object)
    ids = df["example_id"].astype(str).to_numpy()

    keep = np.ones(n, dtype=bool)
    dup = np.array([None] * n, dtype=object)
    dup_cat = np.array([None] * n, dtype=object)
    simv = np.full(n, np.nan)
    passes = np.array(["near_duplicate" if x else "near_duplicate_instruction" for x in is_long], dtype=object)
    reason = np.array([""] * n, dtype=object)

    # 1. exact
    prior_exact = dict(zip(pe["exact_hash"], zip(pe["example_id"], pe["category"])))
    first_seen: dict[str, int] = {}
    for i, hsh in enumerate(exact_hash):
        if hsh in prior_exact:
            keep[i], dup[i], dup_cat[i] = False, prior_exact[hsh][0], prior_exact[hsh][1]
        elif hsh in first_seen:
            keep[i], dup[i], dup_cat[i] = False, ids[first_seen[hsh]], category.name
        else:
            first_seen[hsh] = i
            continue
        simv[i], reason[i], passes[i] = 1.0, "exact_duplicate", "exact"

    # 2. long responses: response embeddings against prior 'response' entries
    pmask = (pe["kind"] == "response").to_numpy() if len(pe) else np.zeros(0, dtype=bool)
    rows = np.flatnonzero(keep & is_long)
    if len(rows):
        pidx = np.flatnonzero(pmask)
        res = greedy_near_dup(response_vecs[rows], thr, prior=pv[pidx], block=block)
        _apply(res, rows, pidx, pe, ids, category.name, keep, dup, dup_cat, simv, reason, "near_duplicate")

    # 3. short responses: instruction embeddings, grouped by normalized response
    rows = np.flatnonzero(keep & ~is_long)
    if len(rows):
        pinst = np.flatnonzero(~pmask) if len(pe) else np.zeros(0, dtype=np.int64)
        prior_groups = pd.Series(pinst).groupby(pe["response_norm_hash"].to_numpy()[pinst]).indices \
            if len(pinst) else {}
        for rh, grp in pd.Series(rows).groupby(resp_hash[rows]).indices.items():
            g_rows = rows[grp]
            g_prior = pinst[prior_groups[rh]] if rh in prior_groups else np.zeros(0, dtype=np.int64)
            if len(g_rows) == 1 and not len(g_prior):
                continue
            res = greedy_near_dup(instruction_vecs[g_rows], thr, prior=pv[g_prior], block=block)
            _apply(res, g_rows, g_prior, pe, ids, category.name, keep, dup, dup_cat, simv, reason,
                   "near_duplicate_instruction")

    evidence = []
    for i in range(n):
        if keep[i]:
            evidence.append({"pass": passes[i], "threshold": thr})
        else:
            evidence.append({"pass": passes[i], "duplicate_of": dup[i], "duplicate_category": dup_cat[i],
                             "similarity": round(float(simv[i]), 6), "threshold": thr})
    out = annotate(df, keep, reason, evidence)
    out["duplicate_of"] = dup
    out["dup_similarity"] = simv
    out["dedup_pass"] = passes
    out["exact_hash"] = exact_hash
    out["response_norm_hash"] = resp_hash
    return out


def _apply(res: GreedyResult, rows, pidx, pe, ids, cat, keep, dup, dup_cat, simv, reason, code) -> None:
    mp = len(pidx)
    for local in np.flatnonzero(~res.keep):
        i = rows[local]
        j = int(res.dup_of[local])
        if j < mp:
            e = pe.iloc[int(pidx[j])]
            dup[i], dup_cat[i] = e["example_id"], e["category"]
        else:
            dup[i], dup_cat[i] = ids[rows[j - mp]], cat
        keep[i], simv[i], reason[i] = False, float(res.similarity[local]), code


def load_prior(conn, category: str, model: str) -> PriorIndex:
    """Kept entries of the other partitions, with their cached vectors (rows whose vector is gone are skipped)."""
    if not table_exists(conn, "embeddings"):
        return PriorIndex()
    res = conn.execute(
        """SELECT d.example_id, d.category, d.kind, d.exact_hash, d.response_norm_hash, e.vector
           FROM dedup_index d JOIN embeddings e ON e.model = d.model AND e.text_hash = d.vec_hash
           WHERE d.category <> ? AND d.model = ? ORDER BY d.category, d.created_at, d.example_id""",
        [category, model],
    )
    to_arrow = getattr(res, "to_arrow_table", None) or res.fetch_arrow_table  # duckdb 2.x / 1.x
    tbl = to_arrow()
    if tbl.num_rows == 0:
        return PriorIndex()
    flat = pc.list_flatten(tbl.column("vector")).to_numpy(zero_copy_only=False).astype(np.float32)
    vecs = flat.reshape(tbl.num_rows, -1)
    entries = tbl.drop(["vector"]).to_pandas()
    return PriorIndex(entries=entries, vectors=vecs)


def index_rows(out: pd.DataFrame, category: str, model: str, is_long: np.ndarray, run_id: str) -> pd.DataFrame:
    k = out["keep"].to_numpy(dtype=bool)
    sub = out[k]
    lk = is_long[k]
    vec_text = np.where(lk, sub["response"].astype(str), sub["instruction"].astype(str))
    return pd.DataFrame({
        "category": category,
        "example_id": sub["example_id"].astype(str).to_numpy(),
        "kind": np.where(lk, "response", "instruction"),
        "exact_hash": sub["exact_hash"].to_numpy(),
        "response_norm_hash": sub["response_norm_hash"].to_numpy(),
        "vec_hash": [text_hash(t) for t in vec_text],
        "model": model,
        "created_at": sub["created_at"].astype(str).to_numpy() if "created_at" in sub.columns else "",
        "run_id": run_id,
        "recorded_at": utcnow(),
    })


def deduplicate(df: pd.DataFrame, category: Category, store: DuckDBStore, embedder: EmbedderResource,
                run_id: str = "", tokenizer=None, block: int = 512) -> tuple[pd.DataFrame, dict]:
    """Deduplicate one partition against itself and the kept rows of every other partition; updates
    `dedup_index`. Returns the annotated frame and summary stats. A conversation is compared by its whole text
    (every user turn as the instruction, the whole transcript as the response: contamination.training_texts),
    as the clean_dataset check does."""
    df = global_order(df).reset_index(drop=True)
    n = len(df)
    own = df[["instruction", "response"]].copy() if n else None
    if n:
        texts = training_texts(df)
        df = df.assign(instruction=texts["instruction"].to_numpy(), response=texts["dedup_text"].to_numpy())
    ntok = count_tokens(df["response"].astype(str).tolist(), tokenizer) if n else np.zeros(0, dtype=np.int64)
    is_long = ntok >= category.filters.near_dup_min_tokens
    if n:  # a tool call is compared like a label: by the user turns, among rows making the same call
        is_long &= ~texts["short_answer"].to_numpy(dtype=bool)
    model = embedder.model_name
    # encode outside the store lock (slow); vectors land in `embeddings` and are never recomputed
    rv = np.zeros((n, 0), dtype=np.float32)
    iv = np.zeros((n, 0), dtype=np.float32)
    if n:
        dim = None
        if is_long.any():
            v = embedder.encode_cached(df.loc[is_long, "response"].astype(str).tolist(), store)
            dim = v.shape[1]
            rv = np.zeros((n, dim), dtype=np.float32)
            rv[is_long] = v
        if (~is_long).any():
            v = embedder.encode_cached(df.loc[~is_long, "instruction"].astype(str).tolist(), store)
            dim = v.shape[1]
            iv = np.zeros((n, dim), dtype=np.float32)
            iv[~is_long] = v
        if rv.shape[1] == 0:
            rv = np.zeros((n, dim), dtype=np.float32)
        if iv.shape[1] == 0:
            iv = np.zeros((n, dim), dtype=np.float32)
    def decide(conn):  # reads the other partitions' index and replaces this one's in one transaction
        prior = load_prior(conn, category.name, model)
        out = dedup_partition(df, category, rv, iv, is_long, prior, block=block) if n else annotate(df, [], [], [])
        conn.execute("DELETE FROM dedup_index WHERE category = ?", [category.name])
        if n:
            insert_df(conn, "dedup_index", index_rows(out, category.name, model, is_long, run_id),
                      on_conflict="replace")
        return prior, out

    prior, out = store.transact(decide)
    if n:  # the rows keep their own last-turn instruction and response
        out["instruction"], out["response"] = own["instruction"].to_numpy(), own["response"].to_numpy()
    stats = {"rows": n, "prior_kept_other_partitions": int(len(prior.entries)),
             "long_responses": int(is_long.sum()) if n else 0}
    if n:
        stats.update({k: int(v) for k, v in out.loc[~out["keep"], "reason"].value_counts().items()})
    return out, stats
