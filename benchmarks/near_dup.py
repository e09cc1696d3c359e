"""Near-dup selection: the blocked exact greedy vs the naive sequential loop, plus the incremental cost.

    python benchmarks/near_dup.py [--sizes 3000 20000 100000] [--extra 0.05]

Data: random 384-d unit vectors with 20% planted near-copies (cosine ~0.94 to their source). At 3k (or the
smallest size <= 5k) the kept set is asserted identical to the naive loop and the speedup printed.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from distill_assets.lib.filters.near_dup import greedy_near_dup


def planted(n, d=384, frac=0.2, noise=0.35, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    k = int(n * frac)
    src, dst = rng.integers(0, n, k), rng.choice(n, k, replace=False)
    Y = X[src] + noise * rng.standard_normal((k, d)).astype(np.float32) / np.sqrt(d)
    X[dst] = Y / np.linalg.norm(Y, axis=1, keepdims=True)
    return X


def naive_loop(embeddings, threshold=0.9):
    """The textbook deduplicate(): cosine_similarity of each item to every kept item (sklearn's formula)."""
    def cosine_similarity(a, b):
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        return a @ b.T
    keep = []
    for i, emb in enumerate(embeddings):
        if not keep or max(cosine_similarity([emb], [embeddings[j] for j in keep])[0]) < threshold:
            keep.append(i)
    return keep


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[3000, 20000, 100000])
    ap.add_argument("--extra", type=float, default=0.05, help="size of the added partition, as a fraction")
    args = ap.parse_args()
    for n in args.sizes:
        X = planted(n)
        t = time.perf_counter()
        res = greedy_near_dup(X, 0.9)
        ours = time.perf_counter() - t
        line = f"n={n:>7}: blocked {ours:7.2f} s, kept {res.keep.sum()} ({1 - res.keep.mean():.1%} dropped)"
        if n <= 5000:
            t = time.perf_counter()
            ref = naive_loop(X)
            loop = time.perf_counter() - t
            same = np.array_equal(np.flatnonzero(res.keep), np.array(ref))
            assert same, "kept set differs from the naive loop"
            line += f" | naive loop {loop:7.2f} s, identical kept set: {same}, speedup {loop / ours:5.1f}x"
        print(line, flush=True)
        m = max(1, int(n * args.extra))
        new = planted(m, seed=1)
        new[: m // 5] = X[res.keep][: m // 5] + 0.0  # copies of rows the first partition kept
        t = time.perf_counter()
        inc = greedy_near_dup(new, 0.9, prior=X[res.keep])
        dt = time.perf_counter() - t
        print(f"          + partition of {m} rows against {res.keep.sum()} kept: {dt:6.2f} s "
              f"({dt / ours:.1%} of the full run), dropped {int((~inc.keep).sum())}", flush=True)


if __name__ == "__main__":
    main()
