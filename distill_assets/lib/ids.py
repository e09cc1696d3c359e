"""Content hashes: the same input always gets the same id (seed_id, generation_id, example_id); the LLM call key is the resource's own."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pandas as pd


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def content_hash(*parts: Any, length: int = 16) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(canonical_json(p).encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()[:length]


def seed_id(category: str, prompt: str, source: str = "seed") -> str:
    return "s_" + content_hash("seed", category, prompt.strip(), source)


def frame_version(df: pd.DataFrame, columns: list[str] | None = None) -> str:
    """A data version for a DataFrame: an order-independent hash of its rows (optionally some columns)."""
    cols = sorted(columns or df.columns.tolist())
    if df.empty:
        return content_hash("empty", cols)
    rows = np.sort(pd.util.hash_pandas_object(df[cols].astype(str), index=False).to_numpy())
    return hashlib.sha256(rows.tobytes() + canonical_json(cols).encode()).hexdigest()[:16]


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
