"""The ONNX embedder backends: onnx gives torch's vectors up to float rounding; onnx-int8 is built once and
cached, close to the torch vectors (the same near-dup pairs away from the threshold), cached under its own model
name; both refuse models whose pooling they do not reproduce."""

from __future__ import annotations

import numpy as np
import pytest

from distill_assets.defs.resources import embedded_embedder
from distill_assets.lib.filters.near_dup import greedy_near_dup
from distill_assets.lib.ledger import open_store
from distill_assets.lib.settings import embedded_embedder_dir
from resources import embed_onnx
from resources import embedder as emb_mod

pytest.importorskip("onnxruntime", reason="the onnx-int8 backend needs the scaleout extra (onnxruntime)")

PAIRS = [("How do I repair the rusty bicycle in a small apartment before winter?",
          "How can I repair the rusty bicycle of a small apartment before the winter?"),
         ("Give me a plan to paint the wooden fence without spending much money.",
          "Give me a plan to paint a wooden fence without spending a lot of money."),
         ("Which mistakes should I avoid when I install a ceiling fan?",
          "What is the capital of France, and how many people live there?"),
         ("Yes.", "First, unplug the heater, then wipe every joint with a soft cloth and check the seals.")]
TEXTS = [t for p in PAIRS for t in p] + [f"Step {k}: sort the {n} in the shed." for k, n in
                                         enumerate(["tools", "paints", "boxes", "cables", "jars", "seeds"])]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def int8(cache):
    return embedded_embedder(backend="onnx-int8", cache_dir=str(cache))


@pytest.fixture(scope="module")
def fp32():
    return embedded_embedder()


def test_int8_vectors_are_close_and_keep_the_same_near_dups(int8, fp32):
    a, b = fp32.encode(TEXTS), int8.encode(TEXTS)
    assert b.shape == a.shape and b.dtype == np.float32
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-4)
    cos = (a * b).sum(1)
    assert np.median(cos) > 0.985 and cos.min() > 0.95, cos  # a 2-token text ("Yes.") moves most
    for threshold in (0.85, 0.9, 0.95):  # no pair within 0.03 of these (pairwise error is up to ~0.015)
        assert (greedy_near_dup(a, threshold).keep == greedy_near_dup(b, threshold).keep).all()
    # input order is kept although the backend batches by length
    assert np.allclose(int8.encode(TEXTS[::-1])[::-1], b, atol=1e-5)


def test_fp32_onnx_gives_torchs_vectors(fp32, cache):
    a = fp32.encode(TEXTS)
    b = embedded_embedder(backend="onnx", cache_dir=str(cache)).encode(TEXTS)
    assert np.abs(a - b).max() < 1e-4
    for threshold in (0.8, 0.85, 0.9, 0.95):
        assert (greedy_near_dup(a, threshold).keep == greedy_near_dup(b, threshold).keep).all()


def test_the_model_file_is_built_once_and_keyed_by_content(int8, cache):
    int8.encode(["warm"])
    st = emb_mod._load(str(embedded_embedder_dir()), "cpu")
    files = [f for f in (cache / "onnx-embed").glob("*.onnx")
             if f == embed_onnx.build(st, embedded_embedder_dir(), cache, "onnx-int8")]
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    assert embed_onnx.build(st, embedded_embedder_dir(), cache, "onnx-int8") == files[0]
    assert files[0].stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert not list((cache / "onnx-embed").glob(".build-*"))  # no half-built leftovers


def test_int8_vectors_are_cached_apart_from_torch_ones(int8, fp32, tmp_path):
    store = open_store(str(tmp_path / "d.duckdb"))
    assert int8.model_name == fp32.model_name + "+onnx-int8"
    fp32.encode_cached(TEXTS[:4], store)
    before = emb_mod.STATS.encoded
    got = int8.encode_cached(TEXTS[:4], store)
    assert emb_mod.STATS.encoded == before + 4  # torch's vectors are not served as int8 ones
    assert np.allclose(got, int8.encode(TEXTS[:4]), atol=1e-6)
    models = store.query_df("SELECT model, count(*) AS n FROM embeddings GROUP BY model ORDER BY model")
    assert models.to_dict("list") == {"model": [fp32.model_name, int8.model_name], "n": [4, 4]}


def test_models_with_other_pooling_are_refused(fp32, tmp_path):
    st = emb_mod._load(str(embedded_embedder_dir()), "cpu")
    pool = st[1]
    mode = pool.pooling_mode
    pool.pooling_mode = "cls"
    try:
        with pytest.raises(ValueError, match="mean Pooling"):
            embed_onnx.build(st, embedded_embedder_dir(), tmp_path, "onnx-int8")
    finally:
        pool.pooling_mode = mode
    with pytest.raises(ValueError, match="needs cache_dir"):
        embedded_embedder(backend="onnx-int8", cache_dir=None).encode(["x"])
