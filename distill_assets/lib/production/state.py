"""Failure status: the one writer of `production_failures.status`, and the reads of the failure tables.

Lifecycle: pending -> in_training | held_out -> resolved. Every status change goes through `set_status`, which
moves only rows whose current status allows it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from distill_assets.lib.ids import seed_id
from distill_assets.lib.production import (
    HELD_OUT,
    IN_TRAINING,
    PENDING,
    RESOLVED,
    STATUSES,
    TRAIN_SPLIT,
)
from distill_assets.lib.records import SEED_COLUMNS
from resources.clock import utcnow
from resources.store import DuckDBStore

TRANSITIONS: dict[str, set[str]] = {
    PENDING: {IN_TRAINING, HELD_OUT},
    IN_TRAINING: {RESOLVED},
    HELD_OUT: {RESOLVED},
    RESOLVED: set(),
}


def list_failures(store: DuckDBStore, status: str | Iterable[str] | None = None, category: str | None = None
                  ) -> pd.DataFrame:
    where, params = [], []
    if status is not None:
        statuses = [status] if isinstance(status, str) else list(status)
        unknown = set(statuses) - set(STATUSES)
        if unknown:
            raise ValueError(f"unknown status {sorted(unknown)}; one of {STATUSES}")
        where.append("list_contains(?, status)")
        params.append(statuses)
    if category is not None:
        where.append("category = ?")
        params.append(category)
    sql = "SELECT * FROM production_failures" + (" WHERE " + " AND ".join(where) if where else "")
    return store.query_df(sql + " ORDER BY ingest_seq", params)


def list_rejects(store: DuckDBStore, source: str | None = None) -> pd.DataFrame:
    if source:
        return store.query_df("SELECT * FROM failure_rejects WHERE source = ? ORDER BY line", [source])
    return store.query_df("SELECT * FROM failure_rejects ORDER BY rejected_at, source, line")


def _ids(failures: Any) -> list[str]:
    if isinstance(failures, pd.DataFrame):
        if "failure_id" not in failures.columns:
            return []
        failures = failures["failure_id"]
    return [str(f) for f in failures if f is not None and not (isinstance(f, float) and pd.isna(f))]


def set_status(store: DuckDBStore, failures: Any, new_status: str, *, resolved_by: str | None = None) -> int:
    """Move failures to `new_status` where the lifecycle allows it; others are left as they are.
    Returns how many rows changed."""
    if new_status not in STATUSES:
        raise ValueError(f"unknown status {new_status!r}; one of {STATUSES}")
    ids = _ids(failures)
    sources = [s for s, targets in TRANSITIONS.items() if new_status in targets]
    if not ids or not sources:
        return 0
    now = utcnow()

    def move(conn) -> int:
        n = conn.execute(
            "SELECT count(*) FROM production_failures WHERE list_contains(?, failure_id) AND list_contains(?, status)",
            [ids, sources],
        ).fetchall()[0][0]
        conn.execute(
            """UPDATE production_failures SET status = ?, updated_at = ?,
                   resolved_by = CASE WHEN ? = 'resolved' THEN ? ELSE resolved_by END
               WHERE list_contains(?, failure_id) AND list_contains(?, status)""",
            [new_status, now, new_status, resolved_by, ids, sources],
        )
        return int(n)

    return store.transact(move)


def mark_in_training(store: DuckDBStore, failures: Any) -> int:
    """Pending failures whose seeds were built move to in_training (ids, or a frame with `failure_id`)."""
    return set_status(store, failures, IN_TRAINING)


def production_seed_rows(store: DuckDBStore, category: str) -> pd.DataFrame:
    """Seed rows (source=production) from the training side of the split. Held-out failures never appear.

    Resolved training failures stay in: dropping them would let the next retrain forget what fixed them."""
    df = store.query_df(
        """SELECT failure_id, category, input, expected, source_line FROM production_failures
           WHERE category = ? AND split = ? AND list_contains(?, status) ORDER BY ingest_seq""",
        [category, TRAIN_SPLIT, [PENDING, IN_TRAINING, RESOLVED]],
    )
    out = pd.DataFrame({
        "seed_id": [seed_id(category, p, source="production") for p in df["input"]],
        "category": df["category"].astype(str),
        "prompt": df["input"].astype(str),
        "difficulty": "medium",
        "reference": df["expected"].astype(object).where(df["expected"].notna(), None),
        "tests": "[]",
        "entry_point": pd.Series([None] * len(df), dtype=object),
        "reference_response": df["expected"].astype(object).where(df["expected"].notna(), None),
        "tags": '["production"]',
        "source": "production",
        "source_file": "production_failures",
        "source_line": df["source_line"].fillna(0).astype(int),
        "failure_id": df["failure_id"].astype(str),
    }, columns=[*SEED_COLUMNS, "failure_id"])
    return out.drop_duplicates("seed_id").reset_index(drop=True)
