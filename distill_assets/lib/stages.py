"""Shared plumbing of the filter stages: annotate every row (keep + reason + evidence) and read the funnel.

A stage asset outputs *all* rows it received, annotated; the next stage reads `kept(previous)`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pandas as pd

from resources.store import DuckDBStore

ANNOTATION_COLUMNS = ["keep", "verdict", "reason", "evidence"]
STAGE_ORDER = ["raw_generations", "quality_filtered", "deduplicated", "judged", "verified", "balanced",
               "decontaminated", "clean_dataset"]
KEPT, DROPPED, QUARANTINED = "kept", "dropped", "quarantined"


def kept(df: pd.DataFrame) -> pd.DataFrame:
    """The rows a stage kept, without its annotation columns: the input of the next stage."""
    if df.empty:
        return df.drop(columns=[c for c in ANNOTATION_COLUMNS if c in df.columns])
    out = df[df["keep"].astype(bool)] if "keep" in df.columns else df
    return out.drop(columns=[c for c in ANNOTATION_COLUMNS if c in out.columns]).reset_index(drop=True)


def _json(e: Any) -> str:
    if isinstance(e, str):
        return e
    return json.dumps(e if e is not None else {}, default=str, ensure_ascii=False)


def annotate(df: pd.DataFrame, keep: Iterable[bool], reason: Iterable[str], evidence: Iterable[Any],
             quarantined: Iterable[bool] | None = None) -> pd.DataFrame:
    """Attach a verdict to every row. `reason` is a short code ('' or 'ok' when kept)."""
    out = df.drop(columns=[c for c in ANNOTATION_COLUMNS if c in df.columns]).copy()
    keep = pd.Series(list(keep), index=out.index, dtype=bool)
    q = pd.Series(list(quarantined) if quarantined is not None else [False] * len(out), index=out.index, dtype=bool)
    out["keep"] = keep & ~q
    # object columns even when empty: pandas types an empty list float64, and the first (empty) partition written
    # would create the table with a DOUBLE verdict column that no later partition's text fits into
    text = lambda values: pd.Series(list(values), index=out.index, dtype=object)
    out["verdict"] = text(QUARANTINED if qi else (KEPT if k else DROPPED) for k, qi in zip(keep, q))
    out["reason"] = text(r if r else ("ok" if k else "unspecified") for r, k in zip(list(reason), out["keep"]))
    out["evidence"] = text(_json(e) for e in evidence)
    return out


def funnel(store: DuckDBStore, category: str | None = None) -> pd.DataFrame:
    """Rows in, kept, dropped and quarantined per (category, stage), in pipeline order."""
    where, params = ("WHERE category = ?", [category]) if category else ("", [])
    df = store.query_df(
        f"""SELECT category, stage, count(*) AS rows_in,
                   count(*) FILTER (WHERE verdict = 'kept') AS kept,
                   count(*) FILTER (WHERE verdict = 'dropped') AS dropped,
                   count(*) FILTER (WHERE verdict = 'quarantined') AS quarantined
            FROM lineage {where} GROUP BY ALL""",
        params,
    )
    if df.empty:
        return df
    df["order"] = df["stage"].map({s: i for i, s in enumerate(STAGE_ORDER)}).fillna(99)
    df["loss"] = 1 - df["kept"] / df["rows_in"].where(df["rows_in"] > 0)
    return df.sort_values(["category", "order"]).drop(columns="order").reset_index(drop=True)


def written_rows(store: DuckDBStore, category: str) -> dict[str, int]:
    """{asset table: rows the IO manager wrote for this category} (its `_distill_partitions` markers)."""
    if not store.table_exists("_distill_partitions"):
        return {}
    df = store.query_df("SELECT asset_table, row_count FROM _distill_partitions WHERE partition_key = ?", [category])
    return {str(t).split(".")[-1]: int(n) for t, n in zip(df["asset_table"], df["row_count"])}


def with_stage(f: pd.DataFrame, df: pd.DataFrame, stage: str, category: str) -> pd.DataFrame:
    """The funnel `f` with `stage`'s row recounted from its annotated output `df` (its verdicts are written
    with the table, after the metadata is computed)."""
    v = df["verdict"] if "verdict" in df.columns else pd.Series(dtype=str)
    n = len(df)
    row = {"category": category, "stage": stage, "rows_in": n, "kept": int((v == KEPT).sum()),
           "dropped": int((v == DROPPED).sum()), "quarantined": int((v == QUARANTINED).sum())}
    row["loss"] = 1 - row["kept"] / n if n else float("nan")
    rest = f[f["stage"] != stage] if not f.empty else f
    out = pd.concat([rest, pd.DataFrame([row])], ignore_index=True) if n else rest
    if out.empty:
        return out
    out = out.assign(order=out["stage"].map({s: i for i, s in enumerate(STAGE_ORDER)}).fillna(99))
    return out.sort_values(["category", "order"]).drop(columns="order").reset_index(drop=True)


def preview_markdown(df: pd.DataFrame, columns: list[str], n: int = 5, width: int = 80) -> str:
    cols = [c for c in columns if c in df.columns]
    if df.empty or not cols:
        return "(no rows)"
    head = df[cols].head(n).copy()
    for c in cols:
        head[c] = head[c].astype(str).str.replace("\n", " ", regex=False).str.slice(0, width)
    return head.to_markdown(index=False)
