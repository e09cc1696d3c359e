"""The one train/validation split: per-row determinism, the forced validation row, per-row fractions."""

import numpy as np
import pandas as pd

from distill_assets.lib.split import split_of


def test_split_is_per_row_and_deterministic():
    ids = pd.Series([f"e{i}" for i in range(200)])
    full = split_of(ids, 0.2)
    assert 20 < (full == "validation").sum() < 60
    assert list(split_of(ids[:50], 0.2)) == list(full[:50])  # a row's split does not depend on the others


def test_forced_validation_row_only_from_min_rows():
    ids = pd.Series([f"x{i}" for i in range(5)])
    assert (split_of(ids, 1e-9) == "validation").sum() == 1
    assert (split_of(ids[:4], 1e-9) == "validation").sum() == 0
    assert (split_of(ids[:2], 1e-9, min_rows=2) == "validation").sum() == 1
    assert (split_of(ids, 0.0) == "validation").sum() == 0  # fraction 0: never forced


def test_per_row_fractions_match_one_fraction_per_group():
    ids = pd.Series([f"r{i}" for i in range(100)])
    fractions = np.array([0.1] * 50 + [0.5] * 50)
    both = split_of(ids, fractions)
    assert list(both[:50]) == list(split_of(ids[:50], 0.1)) and list(both[50:]) == list(split_of(ids[50:], 0.5))
