"""The row-level lineage ledger, queried: why an example was kept or dropped, where it came from, the funnel.

Pure functions over a DuckDBStore; the CLI (`distill lineage why|from <id>`) prints what `why` and `origin`
return. Both raise KeyError with a clear message for an unknown id.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from distill_assets.lib.ledger import STAGE_ORDER_SQL
from distill_assets.lib.stages import funnel as _funnel
from resources.store import DuckDBStore, table_exists


def _loads(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    return v


def _row_dicts(df: pd.DataFrame) -> list[dict]:
    return [{k: (None if (isinstance(v, float) and pd.isna(v)) else v) for k, v in r.items()}
            for r in df.to_dict("records")]


def why(store: DuckDBStore, example_id: str) -> dict:
    """Every stage verdict of `example_id` in pipeline order, and the first stage that did not keep it.

    {"example_id", "category", "status", "first_drop": {stage, verdict, reason, evidence} | None,
     "verdicts": [{stage, verdict, reason, evidence, run_id, recorded_at}, ...]}"""
    df = store.query_df(
        f"""SELECT example_id, category, stage, verdict, reason, evidence, run_id, recorded_at
            FROM lineage WHERE example_id = ? ORDER BY {STAGE_ORDER_SQL}, recorded_at""", [str(example_id)])
    if df.empty:
        raise KeyError(f"no lineage for example {example_id!r}: it was never seen by a filter stage "
                       "(check the id, or materialize quality_filtered for its category)")
    verdicts = _row_dicts(df.drop(columns=["example_id", "category"]))
    for v in verdicts:
        v["evidence"] = _loads(v["evidence"])
    first = next((v for v in verdicts if v["verdict"] != "kept"), None)
    if first:
        status = f"{first['verdict']} at {first['stage']}: {first['reason']}"
    else:
        status = f"kept through {verdicts[-1]['stage']}"
    return {"example_id": str(example_id), "category": str(df["category"].iloc[0]), "status": status,
            "first_drop": {k: first[k] for k in ("stage", "verdict", "reason", "evidence")} if first else None,
            "verdicts": verdicts}


def _raw_row(conn, example_id: str) -> dict | None:
    if not table_exists(conn, "raw_generations"):
        return None
    df = conn.execute("SELECT * FROM raw_generations WHERE example_id = ? OR generation_id = ? LIMIT 1",
                      [example_id, example_id]).df()
    return _row_dicts(df)[0] if len(df) else None


def origin(store: DuckDBStore, example_id: str, max_depth: int = 16) -> dict:
    """Where an example came from: its raw generation, the seed row, the teacher call(s) (every turn of a
    conversation) and its parents.

    {"example_id", "generation": {...raw row...}, "seed": {...} | None, "teacher_calls": [...],
     "evol_chain": [...], "parents": [{"example_id", "method", "instruction", "call_key", "seed_id"}, ...]}"""
    example_id = str(example_id)
    with store.connect() as conn:
        raw = _raw_row(conn, example_id)
        if raw is None:
            raise KeyError(f"unknown example {example_id!r}: not in raw_generations")
        seed = None
        if raw.get("seed_id") and table_exists(conn, "seed_prompts"):
            s = conn.execute("SELECT * FROM seed_prompts WHERE seed_id = ? LIMIT 1", [raw["seed_id"]]).df()
            seed = _row_dicts(s)[0] if len(s) else None
        parents, seen, frontier = [], {example_id}, list(_loads(raw.get("parent_ids")) or [])
        while frontier and len(seen) < max_depth + 1:
            pid = str(frontier.pop(0))
            if pid in seen:
                continue
            seen.add(pid)
            p = _raw_row(conn, pid)
            if p is None:
                parents.append({"example_id": pid, "missing": True})
                continue
            parents.append({k: p.get(k) for k in ("example_id", "method", "instruction", "call_key", "seed_id")})
            frontier.extend(_loads(p.get("parent_ids")) or [])
        # a conversation's every turn (assistant answers and simulated user turns) was its own teacher call
        turn_keys = [c.get("call_key") for c in _loads(raw.get("turn_calls")) or [] if isinstance(c, dict)]
        keys = turn_keys + [raw.get("call_key")] + [p.get("call_key") for p in parents]
        keys = [k for k in dict.fromkeys(keys) if k]
        calls: list[dict] = []
        if keys:
            c = conn.execute(
                "SELECT call_key, model, role, status, prompt_tokens, completion_tokens, cost_usd, latency_s, "
                "created_at, request_json, response FROM teacher_calls WHERE call_key IN ("
                + ",".join("?" * len(keys)) + ")", keys).df()
            calls = _row_dicts(c)
            for call in calls:
                call["request"] = _loads(call.pop("request_json"))
    for k in ("messages", "params", "parent_ids", "tests", "evol_chain", "turn_calls"):
        if k in raw:
            raw[k] = _loads(raw[k])
    return {"example_id": example_id, "generation": raw, "seed": seed, "teacher_calls": calls,
            "evol_chain": raw.get("evol_chain") or [], "parents": parents}


def funnel(store: DuckDBStore, category: str | None = None) -> pd.DataFrame:
    """Rows in / kept / dropped / quarantined per (category, stage), in pipeline order."""
    return _funnel(store, category)
