"""Our encode path (EmbedderResource.encode_cached: DuckDB cache lookup + encode of the misses + insert) vs plain
SentenceTransformer.encode with the same batch size; then the warm-cache path.

    python benchmarks/embedding.py [--texts 1000]
"""

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill_assets.defs.resources import embedded_embedder
from distill_assets.lib.ledger import open_store
from distill_assets.lib.settings import embedded_embedder_dir  # noqa: E402
from resources.embedder import _load  # noqa: E402

WORDS = ("order refund account shipping password reset parcel carrier days page click email link support team "
         "help please thanks within business warehouse return item price discount code").split()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=1000)
    args = ap.parse_args()
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 60))) for _ in range(args.texts)]
    emb = embedded_embedder()
    model = _load(str(embedded_embedder_dir()), "cpu")
    model.encode(texts[:64], batch_size=emb.batch_size)  # warm-up
    t = time.perf_counter()
    model.encode(texts, batch_size=emb.batch_size, normalize_embeddings=True, show_progress_bar=False)
    plain = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as d:
        store = open_store(str(Path(d) / "e.duckdb"))
        emb.encode_cached(["warm-up"], store)
        t = time.perf_counter()
        emb.encode_cached(texts, store)
        cold = time.perf_counter() - t
        t = time.perf_counter()
        emb.encode_cached(texts, store)
        warm = time.perf_counter() - t
    print(f"{args.texts} texts, batch {emb.batch_size}: plain encode {plain:6.2f} s | encode_cached cold "
          f"{cold:6.2f} s ({cold / plain - 1:+.1%}) | warm (all cached) {warm:6.3f} s ({plain / warm:.0f}x faster)")


if __name__ == "__main__":
    main()
