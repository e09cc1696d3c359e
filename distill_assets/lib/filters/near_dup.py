"""First-come-wins near-duplicate selection over unit vectors, exact and blocked.

The result equals the plain sequential loop (`greedy_reference`: item i kept iff its max cosine to all previously
KEPT items < threshold), computed in blocks: one matmul per block against the kept matrix, then the block's own
B x B similarities resolved in order. The kept-matrix matmul runs on the first `head_dims` PCA coordinates only,
with the Cauchy-Schwarz bound |tail_i| * max|tail_K| on the rest, which can only add candidates; every candidate
is then re-scored in float64, so decisions never depend on the bound or on float32.
"""

from dataclasses import dataclass

import numpy as np

_MARGIN = 1e-3  # float32 head-product error is ~1e-6; a wider margin only adds candidates


@dataclass
class GreedyResult:
    keep: np.ndarray  # bool (n,)
    dup_of: np.ndarray  # int (n,): index into concat(prior, X) of the most similar kept item, -1 when kept
    similarity: np.ndarray  # float (n,): that cosine (NaN when kept)


def greedy_reference(X: np.ndarray, threshold: float, prior: np.ndarray | None = None) -> np.ndarray:
    """The sequential loop, literally (float64 cosine): the specification `greedy_near_dup` must equal."""
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
