"""Embedding throughput, the former path against today's, side by side (texts/s, same texts, same process):

- old: SentenceTransformer.encode at batch 64 outside inference_mode, and the cache read into pandas (one
  Python list per vector) and written from Python lists;
- new: EmbedderResource.encode (torch threads = every allowed core, inference_mode, batch 32; texts sorted by
  length by sentence-transformers) and encode_cached (Arrow in and out, each distinct text encoded once).

Texts are the scale benchmark's (benchmarks/scale_workload.py): seed prompts (~23 tokens) and answers (~55).
The vectors of both paths are compared (max |difference|, and the near-dup kept set at 0.9).

A second table puts the backends side by side on the same texts: the former path, torch (today's default), onnx
(ONNX Runtime, fp32) and onnx-int8 (fused graph, int8 weights), each with the agreement of the near-dup
kept set against torch's at the demo threshold and at 0.85/0.95 (the templated texts sit close together, so
many pairs are near each threshold). Agreement falls as N grows, since more pairs sit near a threshold: measure
it at the size you dedup (`--texts 10000` takes ~10 minutes on 2 cores).

    python benchmarks/embedding.py [--texts 2000] [--backends-only]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd

from benchmarks import scale_workload as wl
from distill_assets.defs.resources import embedded_embedder
from distill_assets.lib.filters.near_dup import greedy_near_dup
from distill_assets.lib.ledger import open_store
from resources.embedder import text_hash
from resources.store import insert_df

NEAR_DUP_THRESHOLD = 0.9  # the demo's filters.near_dup_threshold


def old_encode(emb, texts: list[str]) -> np.ndarray:
    vecs = emb._model().encode(list(texts), batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                               show_progress_bar=False)
    return np.asarray(vecs, dtype=np.float32)


def old_encode_cached(emb, texts: list[str], store) -> np.ndarray:
    """The former EmbedderResource.encode_cached, verbatim apart from its encode."""
    hashes = [text_hash(t) for t in texts]
    unique = list(dict.fromkeys(hashes))
    with store.connect() as conn:
        conn.register("_h", pd.DataFrame({"text_hash": unique}))
        try:
            got = conn.execute(
                "SELECT e.text_hash, e.vector FROM embeddings e JOIN _h USING (text_hash) WHERE e.model = ?",
                [emb.model_name]).df()
        finally:
            conn.unregister("_h")
    known = {h: np.asarray(v, dtype=np.float32) for h, v in zip(got["text_hash"], got["vector"])}
    first_text = {}
    for h, t in zip(hashes, texts):
        first_text.setdefault(h, t)
    missing = [h for h in unique if h not in known]
    if missing:
        vecs = old_encode(emb, [first_text[h] for h in missing])
        for h, v in zip(missing, vecs):
            known[h] = v
        rows = pd.DataFrame({"model": emb.model_name, "text_hash": missing, "vector": [v.tolist() for v in vecs]})
        with store.connect() as conn:
            insert_df(conn, "embeddings", rows, on_conflict="ignore")
    return np.stack([known[h] for h in hashes]).astype(np.float32)


def _timed(fn, *a):
    t = time.perf_counter()
    out = fn(*a)
    return out, time.perf_counter() - t


def backends(prompts: list[str], answers: list[str]) -> None:
    emb = embedded_embedder()
    onnx, int8 = embedded_embedder(backend="onnx"), embedded_embedder(backend="onnx-int8")
    onnx.encode(answers[:64]), int8.encode(answers[:64])  # build (once) and load the ONNX files
    print(f"\n{'texts':<9}{'backend':<11}{'texts/s':>9}{'vs former':>11}{'vs torch':>10}{'min cos':>9}"
          "   near-dup kept set agreement with torch (rows kept by torch)")
    for name, texts in (("prompts", prompts), ("answers", answers)):
        n = len(texts)
        _, t_old = _timed(old_encode, emb, texts)
        ref, t_ref = _timed(emb.encode, texts)
        print(f"{name:<9}{'former':<11}{n / t_old:9.0f}")
        for label, e in (("torch", emb), ("onnx", onnx), ("onnx-int8", int8)):
            v, t = (ref, t_ref) if e is emb else _timed(e.encode, texts)
            agree = []
            for th in (0.85, NEAR_DUP_THRESHOLD, 0.95):
                ka, kb = greedy_near_dup(ref, th).keep, greedy_near_dup(v, th).keep
                agree.append(f"{th}: {(ka == kb).mean():.2%} ({int(ka.sum())})")
            print(f"{name:<9}{label:<11}{n / t:9.0f}{t_old / t:10.2f}x{t_ref / t:9.2f}x{(ref * v).sum(1).min():9.4f}   "
                  + ", ".join(agree))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=2000)
    ap.add_argument("--backends-only", action="store_true", help="only the backends table")
    args = ap.parse_args()
    prompts = wl.seed_prompts(args.texts, seed=1)
    answers = [wl.answer(p) for p in prompts]
    if args.backends_only:
        return backends(prompts, answers)
    emb = embedded_embedder()
    emb.encode(answers[:64])  # load and warm up
    print(f"{'texts':<9}{'path':<22}{'old texts/s':>12}{'new texts/s':>12}{'speed-up':>10}{'max |diff|':>12}")
    for name, texts in (("prompts", prompts), ("answers", answers)):
        a, ta = _timed(old_encode, emb, texts)
        b, tb = _timed(emb.encode, texts)
        ka, kb = (greedy_near_dup(v, NEAR_DUP_THRESHOLD).keep for v in (a, b))
        print(f"{name:<9}{'encode':<22}{len(texts) / ta:12.0f}{len(texts) / tb:12.0f}{ta / tb:9.2f}x"
              f"{np.abs(a - b).max():12.1e}   near-dup kept set agrees on {(ka == kb).mean():.2%} of rows "
              f"({int(ka.sum())} vs {int(kb.sum())} kept)")
        with tempfile.TemporaryDirectory() as d:
            s_old, s_new = open_store(str(Path(d) / "old.duckdb")), open_store(str(Path(d) / "new.duckdb"))
            old_encode_cached(emb, ["warm-up"], s_old)
            emb.encode_cached(["warm-up"], s_new)
            a, ta = _timed(old_encode_cached, emb, texts, s_old)
            b, tb = _timed(emb.encode_cached, texts, s_new)
            print(f"{name:<9}{'encode_cached (cold)':<22}{len(texts) / ta:12.0f}{len(texts) / tb:12.0f}"
                  f"{ta / tb:9.2f}x{np.abs(a - b).max():12.1e}")
            a, ta = _timed(old_encode_cached, emb, texts, s_old)
            b, tb = _timed(emb.encode_cached, texts, s_new)
            print(f"{name:<9}{'encode_cached (warm)':<22}{len(texts) / ta:12.0f}{len(texts) / tb:12.0f}"
                  f"{ta / tb:9.2f}x{np.abs(a - b).max():12.1e}")
    backends(prompts, answers)


if __name__ == "__main__":
    main()
