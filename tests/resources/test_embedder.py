"""The embedder's faster paths give the former results: threads/batch/inference_mode change no vector beyond
float rounding, the Arrow cache returns exactly what was stored, and each distinct text is encoded once."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from distill_assets.defs.resources import embedded_embedder
from distill_assets.lib.ledger import open_store
from resources import embedder as emb_mod
from resources.embedder import text_hash
from resources.store import insert_df

TEXTS = [f"How do I repair the {a} {n} before winter, step {k}?" for k, (a, n) in enumerate(
    [("old", "bicycle"), ("rusty", "garden gate"), ("small", "kitchen sink"), ("electric", "heater")] * 3)]
TEXTS += ["Yes.", "A much longer answer: first unplug it, then wipe every joint with a soft cloth, dry it, and "
          "check the seals again after a week so that nothing leaks when the weather turns cold."]


@pytest.fixture(scope="module")
def emb():
    return embedded_embedder()


def _former_encode_cached(emb, texts, store):
    """The former encode_cached: pandas in and out, one Python list per vector, SentenceTransformer at batch 64."""
    hashes = [text_hash(t) for t in texts]
    unique = list(dict.fromkeys(hashes))
    with store.connect() as conn:
        conn.register("_h", pd.DataFrame({"text_hash": unique}))
        try:
            got = conn.execute("SELECT e.text_hash, e.vector FROM embeddings e JOIN _h USING (text_hash) "
                               "WHERE e.model = ?", [emb.model_name]).df()
        finally:
            conn.unregister("_h")
    known = {h: np.asarray(v, dtype=np.float32) for h, v in zip(got["text_hash"], got["vector"])}
    first = {}
    for h, t in zip(hashes, texts):
        first.setdefault(h, t)
    missing = [h for h in unique if h not in known]
    if missing:
        vecs = emb._model().encode([first[h] for h in missing], batch_size=64, normalize_embeddings=True,
                                   convert_to_numpy=True, show_progress_bar=False)
        for h, v in zip(missing, vecs):
            known[h] = np.asarray(v, dtype=np.float32)
        rows = pd.DataFrame({"model": emb.model_name, "text_hash": missing, "vector": [v.tolist() for v in vecs]})
        with store.connect() as conn:
            insert_df(conn, "embeddings", rows, on_conflict="ignore")
    return np.stack([known[h] for h in hashes]).astype(np.float32)


def test_encode_equals_the_former_batch_and_threads(emb):
    ref = np.asarray(emb._model().encode(TEXTS, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                                         show_progress_bar=False), dtype=np.float32)
    got = emb.encode(TEXTS)
    assert got.dtype == np.float32 and got.shape == ref.shape == (len(TEXTS), 384)
    assert np.abs(got - ref).max() < 1e-5
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_encode_cached_equals_the_former_cache_and_encodes_each_text_once(emb, tmp_path):
    texts = TEXTS + TEXTS[:5] + ["Yes."]  # repeats inside one call
    old = _former_encode_cached(emb, texts, open_store(str(tmp_path / "old.duckdb")))
    store = open_store(str(tmp_path / "new.duckdb"))
    before = emb_mod.STATS.encoded
    new = emb.encode_cached(texts, store)
    assert emb_mod.STATS.encoded - before == len(set(texts))  # each distinct text once
    assert new.shape == old.shape and np.abs(new - old).max() < 1e-5
    # a later stage asking for some of the same texts (in another order) computes nothing
    before = emb_mod.STATS.encoded
    again = emb.encode_cached(texts[::-1], store)
    assert emb_mod.STATS.encoded == before
    assert np.array_equal(again, new[::-1])  # bit-identical from the cache
    # the table holds one float32 vector per distinct text, as the former writer stored it
    rows = store.query_df("SELECT text_hash, vector FROM embeddings")
    assert len(rows) == len(set(texts))
    stored = {h: np.asarray(v, dtype=np.float32) for h, v in zip(rows["text_hash"], rows["vector"])}
    assert np.array_equal(np.stack([stored[text_hash(t)] for t in texts]), new)


def test_cache_read_written_by_the_former_code_is_reused(emb, tmp_path):
    store = open_store(str(tmp_path / "e.duckdb"))
    old = _former_encode_cached(emb, TEXTS[:6], store)
    before = emb_mod.STATS.encoded
    new = emb.encode_cached(TEXTS[:8], store)
    assert emb_mod.STATS.encoded - before == 2  # only the two texts the former code never saw
    assert np.array_equal(new[:6], old)


def test_insert_df_takes_an_arrow_table_and_ignores_known_keys(tmp_path):
    store = open_store(str(tmp_path / "a.duckdb"))
    vec = pa.ListArray.from_arrays(pa.array([0, 2, 4], pa.int32()), pa.array([1.0, 0.0, 0.0, 1.0], pa.float32()))
    tbl = pa.table({"model": ["m", "m"], "text_hash": ["a", "b"], "vector": vec})
    assert store.insert_df("embeddings", tbl, on_conflict="ignore") == 2
    assert store.insert_df("embeddings", tbl.slice(0, 1), on_conflict="ignore") == 1  # known key: ignored
    assert store.insert_df("embeddings", tbl.slice(0, 0)) == 0
    got = store.query_df("SELECT text_hash, vector FROM embeddings ORDER BY text_hash")
    assert got["text_hash"].tolist() == ["a", "b"]
    assert [list(v) for v in got["vector"]] == [[1.0, 0.0], [0.0, 1.0]]
