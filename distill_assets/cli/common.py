"""What several commands share: the store, category and asset selection checks, and printing answers."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import dagster as dg
import pandas as pd

from distill_assets import quickstart as qs
from distill_assets.cli.errors import UsageError
from distill_assets.lib.ledger import open_store
from distill_assets.lib.settings import get_settings
from distill_assets.lib.tasks import load_tasks
from resources.store import DuckDBStore


def store() -> DuckDBStore:
    get_settings().database.parent.mkdir(parents=True, exist_ok=True)
    return open_store()  # DISTILL_STORE: the DuckDB file or a DuckLake


def check_categories(requested: list[str] | None) -> list[str]:
    names = list(load_tasks().names)
    if not requested:
        return names
    unknown = [c for c in requested if c not in names]
    if unknown:
        raise UsageError(f"unknown category {', '.join(map(repr, unknown))}; the task file has: {', '.join(names)}")
    return list(dict.fromkeys(requested))


def keys_for(defs: dg.Definitions, select: str | None, *, partitioned_only: bool) -> list[dg.AssetKey]:
    try:
        keys = qs.resolve_selection(defs, select)
    except LookupError as e:
        raise UsageError(str(e).strip("'\"")) from None
    part, unpart, other = qs.split_by_partitioning(defs, keys)
    if partitioned_only:
        if select and (unpart or other):
            bad = ", ".join(k.to_user_string() for k in unpart + other)
            raise UsageError(f"{bad}: not partitioned by category; use `distill materialize --select {bad}` "
                             "without --category for it")
        if not part:
            raise UsageError("the selection holds no per-category asset")
        return part
    return keys


def emit(value: Any) -> None:
    """Print a lineage/failures answer whatever its shape: DataFrame, dict, list, dataclass or text."""
    if value is None:
        return
    if isinstance(value, pd.DataFrame):
        if value.empty:
            print("(no rows)")
            return
        with pd.option_context("display.max_colwidth", 80, "display.width", 200):
            print(value.to_string(index=False))
        return
    if hasattr(value, "to_dict") and not isinstance(value, dict):
        value = value.to_dict()
    elif hasattr(value, "__dataclass_fields__"):
        value = dataclasses.asdict(value)
    elif hasattr(value, "model_dump"):
        value = value.model_dump()
    if isinstance(value, (dict, list, tuple)):
        print(json.dumps(value, indent=2, default=str))
    else:
        print(value)


def is_empty(value: Any) -> bool:
    if value is None:
        return True
    if hasattr(value, "empty"):
        return bool(value.empty)
    if isinstance(value, (list, tuple, dict, str)):
        return len(value) == 0
    return False
