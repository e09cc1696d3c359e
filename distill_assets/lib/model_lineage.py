"""Which rows trained a model: from any artifact of the chain (adapter, merged model, exports) to the exact
clean_dataset rows, and the one SQL query that returns them.

The lora_adapter's dataset artifact records the version it trained on. On a DuckLake store that is
`snapshot:<id>`, and `SELECT * FROM clean_dataset AT (VERSION => <id>) WHERE category IN (...)` returns those
rows exactly, whatever was written since. On the file store it is the rows' content version; the query reads
the recorded example ids from the current table, and the answer says whether the table still holds that version.
"""

from __future__ import annotations

import json

import pandas as pd

from distill_assets.lib.artifacts import artifact_chain
from distill_assets.lib.ids import frame_version
from resources.store import DuckDBStore


def _quote(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def dataset_of(store: DuckDBStore, artifact_id: str) -> dict:
    """The dataset artifact (kind 'dataset') under `artifact_id`; LookupError naming what is missing."""
    chain = artifact_chain(store, artifact_id)
    if not chain:
        raise LookupError(f"artifact {artifact_id!r} is not in the artifacts table")
    for row in chain:
        if row.get("kind") == "dataset":
            return row
    raise LookupError(f"artifact {artifact_id!r} has no dataset among its ancestors "
                      f"({' -> '.join(r['artifact_id'] for r in chain)}): it was not trained by this project")


def training_rows(store: DuckDBStore, artifact_id: str) -> dict:
    """{"artifact", "dataset", "dataset_version", "sql", "exact", "note", "rows": DataFrame}."""
    ds = dataset_of(store, artifact_id)
    meta = json.loads(ds["metadata"]) if isinstance(ds.get("metadata"), str) else (ds.get("metadata") or {})
    version = str(ds["dataset_version"])
    cats = ", ".join(_quote(c) for c in meta.get("categories", [])) or "NULL"
    if version.startswith("snapshot:"):
        snap = int(version.split(":", 1)[1])
        sql = f"SELECT * FROM clean_dataset AT (VERSION => {snap}) WHERE category IN ({cats}) ORDER BY example_id"
        rows = store.query_df(sql)
        exact, note = True, f"the lake's snapshot {snap}, as the training step read it"
    else:
        ids = meta.get("example_ids") or []
        sql = (f"SELECT * FROM clean_dataset WHERE category IN ({cats}) AND example_id IN "
               f"(SELECT unnest(example_ids) FROM (SELECT json_extract_string(metadata, '$.example_ids[*]') "
               f"AS example_ids FROM artifacts WHERE artifact_id = {_quote(ds['artifact_id'])})) ORDER BY example_id")
        rows = store.query_df(sql)
        current = store.query_df(f"SELECT * FROM clean_dataset WHERE category IN ({cats})")
        content = meta.get("content_version") or version
        exact = frame_version(current) == content and len(rows) == len(ids)
        note = ("the current clean_dataset still holds that version" if exact else
                f"clean_dataset changed since (content {frame_version(current)}, trained on {content}): "
                f"{len(rows)} of the {len(ids)} recorded rows are still there")
    return {"artifact": artifact_id, "dataset": ds["artifact_id"], "dataset_version": version, "sql": sql,
            "exact": exact, "note": note, "rows": rows if isinstance(rows, pd.DataFrame) else pd.DataFrame()}
