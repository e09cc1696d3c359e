"""`deduplicated`: the guide's filter 2 (exact and near-duplicate removal), exact, vectorized and incremental.

Order. Rows are processed in one deterministic global order, (created_at, example_id), and the first one wins.
Across partitions, whatever is already kept in the side table `dedup_index` (other categories, materialized
earlier) wins over the partition being materialized: a new partition or a backfill is deduplicated against
everything kept before it, and re-materializing a partition first drops its own old index entries. The index
is read, the partition resolved and the index rewritten in one store transaction, so two partitions
materialized at the same time queue instead of missing each other.

Passes (each row is in exactly one near-dup pass, so the passes cannot disagree):
  1. exact: hash of normalized (casefold, punctuation stripped, whitespace collapsed) instruction + response;
  2. near_duplicate: responses of at least `filters.near_dup_min_tokens` tokens, cosine of all-MiniLM-L6-v2
     embeddings >= `filters.near_dup_threshold`;
  3. near_duplicate_instruction: shorter responses (labels, bare numbers, which are identical across distinct
     prompts) are compared on the instruction embedding, only against rows with the same normalized response
     (the guide's "semantically identical instructions with same response"). Long identical responses are
     already caught by pass 2 (their cosine is ~1).

Near-dup selection equals the guide's sequential loop exactly (item i kept iff its max cosine to all
previously KEPT items < threshold), computed in blocks: one matmul per block against the kept matrix, then the
block's own B x B similarities resolved in order. The kept-matrix matmul runs on the first `head_dims` PCA
coordinates only, with the Cauchy-Schwarz bound |tail_i| * max|tail_K| on the rest, which can only add
candidates; every candidate is then re-scored in float64, so decisions never depend on the bound or on float32.
"""

import hashlib
from dataclasses import dataclass, field

import dagster as dg
import numpy as np
import pandas as pd

from distill_assets.partitions import CATEGORY
from distill_assets.stages import annotate, kept, publish_stage
from distill_assets.tasks import Category, load_tasks
from resources.embedder import EmbedderResource, text_hash
from resources.store import DuckDBStore, insert_df, table_exists, utcnow

INDEX_DDL = """CREATE TABLE IF NOT EXISTS dedup_index (
    category VARCHAR, example_id VARCHAR, kind VARCHAR, exact_hash VARCHAR, response_norm_hash VARCHAR,
    vec_hash VARCHAR, model VARCHAR, created_at VARCHAR, run_id VARCHAR, recorded_at TIMESTAMPTZ,
    PRIMARY KEY (category, example_id))"""

_MARGIN = 1e-3  # float32 head-product error is ~1e-6; a wider margin only adds candidates


# ---------------------------------------------------------------- the exact blocked greedy

@dataclass
class GreedyResult:
    keep: np.ndarray  # bool (n,)
    dup_of: np.ndarray  # int (n,): index into concat(prior, X) of the most similar kept item, -1 when kept
    similarity: np.ndarray  # float (n,): that cosine (NaN when kept)


def greedy_reference(X: np.ndarray, threshold: float, prior: np.ndarray | None = None) -> np.ndarray:
    """The guide's loop, literally (float64 cosine): the specification `greedy_near_dup` must equal."""
    X = np.asarray(X, dtype=np.float64)
    kept_vecs = [np.asarray(p, dtype=np.float64) for p in (prior if prior is not None else [])]
    keep = np.zeros(len(X), dtype=bool)
    for i, emb in enumerate(X):
        if not kept_vecs or max(np.asarray(kept_vecs) @ emb) < threshold:
            keep[i] = True
            kept_vecs.append(emb)
    return keep


def _rotation(sample: np.ndarray) -> np.ndarray | None:
    if len(sample) < sample.shape[1]:
        return None
    s64 = sample.astype(np.float64)
    w, v = np.linalg.eigh(s64.T @ s64)  # principal axes of the uncentered second moment
    return np.ascontiguousarray(v[:, ::-1].astype(np.float32))


def greedy_near_dup(X: np.ndarray, threshold: float, prior: np.ndarray | None = None, block: int = 512,
                    head_dims: int = 96, col_chunk: int = 32768) -> GreedyResult:
    """First-come-wins near-duplicate selection over unit vectors X (n, d), against already-kept `prior`."""
    X = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
    n = len(X)
    d = X.shape[1] if X.ndim == 2 else 0
    P = np.zeros((0, d), dtype=np.float32) if prior is None or len(prior) == 0 else \
        np.ascontiguousarray(np.asarray(prior, dtype=np.float32))
    m = len(P)
    keep = np.zeros(n, dtype=bool)
    dup_of = np.full(n, -1, dtype=np.int64)
    sim = np.full(n, np.nan)
    if n == 0:
        return GreedyResult(keep, dup_of, sim)

    R = None
    if d >= 2 * head_dims and m + n > 2 * block:
        pick = np.linspace(0, m + n - 1, num=min(m + n, 4096)).astype(np.int64)
        sample = np.concatenate([P[pick[pick < m]], X[pick[pick >= m] - m]])
        R = _rotation(sample)
    h = head_dims if R is not None else d

    cap = m + n
    K = np.empty((cap, d), dtype=np.float32)  # kept vectors, exact
    K[:m] = P
    ids = np.empty(cap, dtype=np.int64)
    ids[:m] = np.arange(m)
    if R is not None:
        KR = np.empty((cap, h), dtype=np.float32)
        Ktail = np.empty(cap, dtype=np.float32)
        if m:
            pr = P @ R
            KR[:m] = pr[:, :h]
            Ktail[:m] = np.linalg.norm(pr[:, h:], axis=1)
    k = m

    for s in range(0, n, block):
        b = X[s:s + block]
        B = len(b)
        b64 = b.astype(np.float64)
        best = np.full(B, -np.inf)
        barg = np.full(B, -1, dtype=np.int64)
        if k:
            if R is not None:
                br = b @ R
                bh = np.ascontiguousarray(br[:, :h])
                cut = threshold - np.linalg.norm(br[:, h:], axis=1) * float(Ktail[:k].max()) - _MARGIN
            else:
                bh, cut = b, np.full(B, threshold - _MARGIN)
            for c0 in range(0, k, col_chunk):
                c1 = min(k, c0 + col_chunk)
                S = bh @ (KR[c0:c1] if R is not None else K[c0:c1]).T
                hit = np.flatnonzero(S.max(axis=1) >= cut)  # most rows have no candidate at all
                if not len(hit):
                    continue
                mask = S[hit] >= cut[hit, None]
                if R is not None and int(mask.sum()) > 16 * B:
                    # the bound is loose for this data: exact float32 products prune better here
                    S = b @ K[c0:c1].T
                    hit = np.flatnonzero(S.max(axis=1) >= threshold - _MARGIN)
                    if not len(hit):
                        continue
                    mask = S[hit] >= threshold - _MARGIN
                r_h, cols = np.nonzero(mask)
                rows, cols = hit[r_h], cols + c0
                exact = np.einsum("ij,ij->i", b64[rows], K[cols].astype(np.float64))
                # several candidates per row: keep each row's maximum
                order = np.lexsort((-exact, rows))
                r_s, e_s, c_s = rows[order], exact[order], cols[order]
                first = np.ones(len(r_s), dtype=bool)
                first[1:] = r_s[1:] != r_s[:-1]
                r_s, e_s, c_s = r_s[first], e_s[first], c_s[first]
                upd = e_s > best[r_s]
                best[r_s[upd]] = e_s[upd]
                barg[r_s[upd]] = c_s[upd]
        G = b64 @ b64.T
        cand = np.tril(G >= threshold, -1)
        has_cand = cand.any(axis=1)
        local_keep = np.zeros(B, dtype=bool)
        for i in range(B):
            bi, gi, gj = best[i], -np.inf, -1
            if has_cand[i]:
                js = np.flatnonzero(local_keep[:i])
                if len(js):
                    gvals = G[i, js]
                    a = int(np.argmax(gvals))
                    gi, gj = float(gvals[a]), int(js[a])
            if bi < threshold and gi < threshold:
                local_keep[i] = True
                continue
            if gi > bi:
                dup_of[s + i], sim[s + i] = m + s + gj, gi
            else:
                dup_of[s + i], sim[s + i] = ids[barg[i]], bi
        kb = np.flatnonzero(local_keep)
        keep[s + kb] = True
        nk = len(kb)
        if nk:
            K[k:k + nk] = b[kb]
            ids[k:k + nk] = m + s + kb
            if R is not None:
                kr = b[kb] @ R
                KR[k:k + nk] = kr[:, :h]
                Ktail[k:k + nk] = np.linalg.norm(kr[:, h:], axis=1)
            k += nk
    return GreedyResult(keep, dup_of, sim)


# ---------------------------------------------------------------- normalization and hashes

def normalize_series(s: pd.Series) -> pd.Series:
    """casefold, strip punctuation, collapse whitespace (vectorized)."""
    out = s.fillna("").astype(str).str.casefold()
    out = out.str.replace(r"[^\w\s]|_", "", regex=True)
    return out.str.replace(r"\s+", " ", regex=True).str.strip()


def _hash(values) -> list[str]:
    return [hashlib.sha256(v.encode("utf-8")).hexdigest()[:20] for v in values]


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
    nr = normalize_series(df["response"])
    ni = normalize_series(df["instruction"])
    exact_hash = np.array(_hash(ni + "\x1f" + nr), dtype=object)
    resp_hash = np.array(_hash(nr), dtype=object)
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
    conn.execute(INDEX_DDL)
    if not table_exists(conn, "embeddings"):
        return PriorIndex()
    res = conn.execute(
        """SELECT d.example_id, d.category, d.kind, d.exact_hash, d.response_norm_hash, e.vector
           FROM dedup_index d JOIN embeddings e ON e.model = d.model AND e.text_hash = d.vec_hash
           WHERE d.category <> ? AND d.model = ? ORDER BY d.category, d.created_at, d.example_id""",
        [category, model],
    )
    to_arrow = getattr(res, "to_arrow_table", None) or getattr(res, "fetch_arrow_table")  # duckdb 2.x / 1.x
    tbl = to_arrow()
    if tbl.num_rows == 0:
        return PriorIndex()
    import pyarrow.compute as pc

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
    `dedup_index`. Returns the annotated frame and summary stats."""
    from distill_assets.filters.quality import count_tokens

    df = global_order(df).reset_index(drop=True)
    n = len(df)
    ntok = count_tokens(df["response"].astype(str).tolist(), tokenizer) if n else np.zeros(0, dtype=np.int64)
    is_long = ntok >= category.filters.near_dup_min_tokens
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
    with store.connect() as conn:
        prior = load_prior(conn, category.name, model)
        if n:
            out = dedup_partition(df, category, rv, iv, is_long, prior, block=block)
        else:
            out = annotate(df, [], [], [])
        conn.execute("DELETE FROM dedup_index WHERE category = ?", [category.name])
        if n:
            insert_df(conn, "dedup_index", index_rows(out, category.name, model, is_long, run_id),
                      on_conflict="replace")
    stats = {"rows": n, "prior_kept_other_partitions": int(len(prior.entries)),
             "long_responses": int(is_long.sum()) if n else 0}
    if n:
        stats.update({k: int(v) for k, v in out.loc[~out["keep"], "reason"].value_counts().items()})
    return out, stats


@dg.asset(
    name="deduplicated",
    ins={"quality_filtered": dg.AssetIn("quality_filtered")},
    partitions_def=CATEGORY,
    group_name="filtering",
    kinds={"duckdb", "pandas"},
    code_version="dedup-v1",
    metadata={"partition_expr": "category"},
)
def deduplicated(context: dg.AssetExecutionContext, store: DuckDBStore, embedder: EmbedderResource,
                 quality_filtered: pd.DataFrame):
    """The rows kept by quality_filtered, annotated by exact and near-duplicate removal (the guide's filter 2):
    normalized-text hash, then all-MiniLM-L6-v2 cosine >= filters.near_dup_threshold, first in
    (created_at, example_id) order wins and rows kept in other partitions win over this one. Dropped rows
    carry duplicate_of (example_id) and dup_similarity; kept rows are added to the `dedup_index` side table."""
    category = load_tasks().category(context.partition_key)
    out, stats = deduplicate(kept(quality_filtered), category, store, embedder, run_id=context.run.run_id)
    return publish_stage(context, store, out, stage="deduplicated",
                         extra_metadata={"dedup": dg.MetadataValue.json(stats)},
                         preview_columns=["example_id", "response", "verdict", "reason", "duplicate_of",
                                          "dup_similarity"])


assets = [deduplicated]
