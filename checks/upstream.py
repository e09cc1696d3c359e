"""Which materialization of an upstream asset a step reads: the one in its own run's lineage, never "the newest".

Assets that hand model files to each other (student_base_model -> lora_adapter -> merged_model -> gguf_export,
awq_export -> eval_report) name the artifact they registered in their materialization metadata (`artifact_id`,
or `artifact_ids` for several files). A consumer reads that name from the upstream materialization of *this*
run (or, for a re-execution, of the run it re-executes, up to the root); only an upstream that this lineage did
not materialize falls back to its latest materialization, the one Dagster shows as current. Two runs that
interleave (A trains, B trains, B exports, A exports) therefore each export their own adapter.

Asset checks use the same resolution for the asset they check. Lives here, below defs, so that both can use it.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from distill_assets.lib.artifacts import artifact_row
from resources.store import DuckDBStore

_PAGE = 100


def _lineage_run_ids(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[str]:
    ids, parent = [run.run_id], run.parent_run_id
    while parent and parent not in ids:
        ids.append(parent)
        prev = instance.get_run_by_id(parent)
        parent = prev.parent_run_id if prev is not None else None
    return ids


def _in_run(instance: dg.DagsterInstance, key: dg.AssetKey, run_id: str) -> dg.EventLogRecord | None:
    record = instance.get_run_record_by_id(run_id)
    if record is None:
        return None
    start = record.start_time or record.create_timestamp.timestamp()
    flt = dg.AssetRecordsFilter(asset_key=key, after_timestamp=start - 1.0)  # only events since that run began
    cursor = None
    while True:
        res = instance.fetch_materializations(flt, limit=_PAGE, cursor=cursor)
        for r in res.records:  # newest first
            if r.run_id == run_id:
                return r
        if not res.has_more:
            return None
        cursor = res.cursor


def upstream_record(context: Any, asset: str | dg.AssetKey) -> dg.EventLogRecord | None:
    """The materialization record of `asset` this step depends on (see the module docstring), or None when
    the asset was never materialized. `context`: an asset or asset-check execution context."""
    key = dg.AssetKey.from_coercible(asset)
    instance = context.instance
    for run_id in _lineage_run_ids(instance, context.run):
        found = _in_run(instance, key, run_id)
        if found is not None:
            return found
    latest = instance.fetch_materializations(key, limit=1).records
    return latest[0] if latest else None


def metadata_value(record: dg.EventLogRecord, name: str) -> Any:
    v = record.asset_materialization.metadata.get(name)
    return getattr(v, "value", v)


def _name(asset: str | dg.AssetKey) -> str:
    return dg.AssetKey.from_coercible(asset).to_user_string()


def _record_or_fail(context: Any, asset: str | dg.AssetKey) -> dg.EventLogRecord:
    record = upstream_record(context, asset)
    asset = _name(asset)
    if record is None:
        raise dg.Failure(f"{asset} has never been materialized; materialize {asset} first")
    return record


def upstream_artifact(context: Any, store: DuckDBStore, asset: str | dg.AssetKey) -> dict:
    """The `artifacts` row named by `asset`'s materialization in this run's lineage (metadata parsed)."""
    record = _record_or_fail(context, asset)
    asset = _name(asset)
    artifact_id = metadata_value(record, "artifact_id")
    if not artifact_id:
        status = metadata_value(record, "status")
        raise dg.Failure(f"the materialization of {asset} in run {record.run_id} names no artifact_id"
                         + (f" ({status})" if status else "") + f"; rematerialize {asset}")
    return artifact_row(store, str(artifact_id), asset)


def upstream_artifacts(context: Any, store: DuckDBStore, asset: str | dg.AssetKey) -> dict[str, dict]:
    """{name: artifacts row} of an asset that registers several files (`artifact_ids` metadata, e.g. GGUF)."""
    record = _record_or_fail(context, asset)
    asset = _name(asset)
    ids = metadata_value(record, "artifact_ids")
    if not isinstance(ids, dict) or not ids:
        raise dg.Failure(f"the materialization of {asset} in run {record.run_id} names no artifact_ids; "
                         f"rematerialize {asset}")
    return {name: artifact_row(store, str(aid), asset) for name, aid in ids.items()}


def upstream_artifact_or_reason(context: Any, store: DuckDBStore, asset: str, *, several: bool = False):
    """Like upstream_artifact(s), but a missing or skipped upstream is a "skipped: ..." reason instead of a
    failure: the evaluation reports a variant that cannot run as one row with its reason."""
    record = upstream_record(context, asset)
    if record is None:
        return f"skipped: {asset} has never been materialized"
    for key in ("status", "skipped"):
        note = metadata_value(record, key)
        if isinstance(note, str) and note.strip().startswith("skipped"):
            return note.strip()
    try:
        return upstream_artifacts(context, store, asset) if several else upstream_artifact(context, store, asset)
    except dg.Failure as e:
        return f"skipped: {e.description}"
    except LookupError as e:
        return f"skipped: {e.args[0]}"
