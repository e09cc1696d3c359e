"""The one train/validation split: a row's split comes from a hash of its example_id.

clean_dataset decides its `split` column with it, per category; training reuses that column and only falls back
to this same rule when a dataset carries no validation rows.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd


def split_of(example_ids: pd.Series, fraction: float | np.ndarray, *, min_rows: int = 5) -> np.ndarray:
    """Deterministic split from a hash of example_id: a row's split never depends on the other rows, except
    that a set of >= `min_rows` rows with none below `fraction` sends its lowest-hash row to validation.

    `fraction` is one number or one per row (rows of several categories, each with its own fraction)."""
    ids = example_ids.astype(str).tolist()
    u = np.array([int(hashlib.sha256(("split\x1f" + i).encode()).hexdigest()[:13], 16) / 16 ** 13 for i in ids])
    split = np.where(u < fraction, "validation", "train").astype(object)
    if len(ids) >= min_rows and np.any(np.asarray(fraction) > 0) and not (split == "validation").any():
        split[int(np.argmin(u))] = "validation"
    return split
