"""The ledger: the one owner of every side table's DDL and of the views over them.

Asset tables (seed_prompts … clean_dataset, eval_set) belong to the IO manager; everything else the graph
records (teacher calls, lineage verdicts, artifacts, production failures, evaluation results) is created
here. `open_store` hands out a store that creates all of it when it first touches a database, so every
documented query works on a fresh database.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from distill_assets.lib.settings import get_settings, store_lock_timeout_s
from distill_assets.lib.stages import STAGE_ORDER
from resources.clock import utcnow
from resources.io_manager import DistillDuckDBIOManager
from resources.store import DuckDBStore

TABLES: dict[str, str] = {
    "teacher_calls": """
        CREATE TABLE IF NOT EXISTS teacher_calls (
            call_key VARCHAR PRIMARY KEY, model VARCHAR, role VARCHAR, status VARCHAR, response VARCHAR,
            finish_reason VARCHAR, prompt_tokens BIGINT, completion_tokens BIGINT, cost_usd DOUBLE,
            latency_s DOUBLE, attempts INTEGER, error VARCHAR, category VARCHAR, run_id VARCHAR,
            request_json VARCHAR, created_at TIMESTAMPTZ, budget_scope VARCHAR, tool_calls VARCHAR)""",
    # Batch API jobs (resources/llm_batch.py), written before the first poll: a rerun after a kill resumes the open
    # job that holds its pending call keys instead of buying them twice; completed_at is set once its answers are
    # in teacher_calls
    "teacher_batches": """
        CREATE TABLE IF NOT EXISTS teacher_batches (
            batch_id VARCHAR PRIMARY KEY, role VARCHAR, model VARCHAR, base_url VARCHAR, category VARCHAR,
            run_id VARCHAR, input_file_id VARCHAR, call_keys JSON, status VARCHAR, created_at TIMESTAMPTZ,
            updated_at TIMESTAMPTZ, completed_at TIMESTAMPTZ, counts JSON)""",
    # the teacher's top-k logprobs of an answered call (resources/llm_logprobs.py has the layout): token_ids int32
    # [n, k+1] (column 0 the sampled token) and logprobs float16 [n, k+1], ids of the tokenizer named `tokenizer`
    "teacher_logprobs": """
        CREATE TABLE IF NOT EXISTS teacher_logprobs (
            call_key VARCHAR PRIMARY KEY, model VARCHAR, k INTEGER, n_tokens INTEGER, token_ids BLOB, logprobs BLOB,
            tokenizer VARCHAR, unmapped INTEGER, created_at TIMESTAMPTZ)""",
    # what live runs have claimed of a spend cap (resources/budget.py); a dead run's row is ignored and swept
    "budget_reservations": """
        CREATE TABLE IF NOT EXISTS budget_reservations (
            session_id VARCHAR PRIMARY KEY, scope VARCHAR, role VARCHAR, pid BIGINT, host VARCHAR,
            reserved_usd DOUBLE, reserved_tokens BIGINT, updated_at TIMESTAMPTZ)""",
    "lineage": """
        CREATE TABLE IF NOT EXISTS lineage (
            example_id VARCHAR, category VARCHAR, stage VARCHAR, verdict VARCHAR, reason VARCHAR,
            evidence VARCHAR, run_id VARCHAR, recorded_at TIMESTAMPTZ, PRIMARY KEY (example_id, stage))""",
    "artifacts": """
        CREATE TABLE IF NOT EXISTS artifacts (
            artifact_id VARCHAR PRIMARY KEY, asset VARCHAR, kind VARCHAR, path VARCHAR, sha256 VARCHAR,
            bytes BIGINT, parent_artifact_id VARCHAR, dataset_version VARCHAR, run_id VARCHAR,
            metadata VARCHAR, created_at TIMESTAMPTZ)""",
    "production_failures": """
        CREATE TABLE IF NOT EXISTS production_failures (
            failure_id VARCHAR PRIMARY KEY, category VARCHAR, input VARCHAR, bad_output VARCHAR,
            expected VARCHAR, reported_at TIMESTAMPTZ, status VARCHAR, source VARCHAR, ingested_at TIMESTAMPTZ,
            ingest_seq BIGINT, batch_key VARCHAR, updated_at TIMESTAMPTZ, split VARCHAR, source_line INTEGER,
            resolved_by VARCHAR)""",
    "failure_rejects": """
        CREATE TABLE IF NOT EXISTS failure_rejects (
            source VARCHAR, line INTEGER, field VARCHAR, reason VARCHAR, raw VARCHAR, rejected_at TIMESTAMPTZ,
            detail VARCHAR)""",
    "failure_files": """
        CREATE TABLE IF NOT EXISTS failure_files (
            sha256 VARCHAR PRIMARY KEY, path VARCHAR, lines INTEGER, inserted INTEGER, rejected INTEGER,
            duplicates INTEGER, ingested_at TIMESTAMPTZ)""",
    "failure_batches": """
        CREATE TABLE IF NOT EXISTS failure_batches (
            batch_key VARCHAR PRIMARY KEY, wave VARCHAR, wave_size INTEGER, category VARCHAR, failure_ids VARCHAR,
            pending INTEGER, held_out INTEGER, max_seq BIGINT, reason VARCHAR, created_at TIMESTAMPTZ)""",
    "embeddings": """
        CREATE TABLE IF NOT EXISTS embeddings (
            model VARCHAR, text_hash VARCHAR, vector FLOAT[], PRIMARY KEY (model, text_hash))""",
    "dedup_index": """
        CREATE TABLE IF NOT EXISTS dedup_index (
            category VARCHAR, example_id VARCHAR, kind VARCHAR, exact_hash VARCHAR, response_norm_hash VARCHAR,
            vec_hash VARCHAR, model VARCHAR, created_at VARCHAR, run_id VARCHAR, recorded_at TIMESTAMPTZ,
            PRIMARY KEY (category, example_id))""",
    "eval_results": """
        CREATE TABLE IF NOT EXISTS eval_results (
            example_id VARCHAR, variant VARCHAR, category VARCHAR, difficulty VARCHAR, source VARCHAR,
            length_bucket VARCHAR, prompt VARCHAR, response VARCHAR, metric VARCHAR, score DOUBLE,
            task_status VARCHAR, task_detail VARCHAR, rouge_l DOUBLE, response_tokens BIGINT, finish_reason VARCHAR,
            latency_s DOUBLE, generation_error VARCHAR, judge_verdict VARCHAR, judge_score DOUBLE,
            judge_consistent BOOLEAN, judge_rationale VARCHAR, judge_vs_base_verdict VARCHAR,
            judge_vs_base_score DOUBLE, judge_vs_base_consistent BOOLEAN, failure_category VARCHAR,
            adapter_version VARCHAR, run_id VARCHAR, created_at TIMESTAMPTZ,
            PRIMARY KEY (adapter_version, variant, example_id))""",
    "eval_summary": """
        CREATE TABLE IF NOT EXISTS eval_summary (
            adapter_version VARCHAR, variant VARCHAR, category VARCHAR, metric VARCHAR, status VARCHAR,
            reason VARCHAR, n BIGINT, n_scored BIGINT, task_score DOUBLE, task_ci_low DOUBLE, task_ci_high DOUBLE,
            infra_errors BIGINT, teacher_score DOUBLE, transfer_ratio DOUBLE, transfer_target DOUBLE,
            meets_target BOOLEAN, win_rate_vs_teacher DOUBLE, win_ci_low DOUBLE, win_ci_high DOUBLE,
            n_judged BIGINT, wins BIGINT, ties BIGINT, losses BIGINT, consistency_rate DOUBLE, unparseable BIGINT,
            judge_errors BIGINT, win_rate_vs_base DOUBLE, base_win_ci_low DOUBLE, base_win_ci_high DOUBLE,
            base_consistency_rate DOUBLE, base_unparseable BIGINT, latency_p50_s DOUBLE, latency_p95_s DOUBLE,
            tokens_per_s DOUBLE, peak_mem_mb DOUBLE, size_bytes BIGINT, usd_per_1m_tokens DOUBLE,
            cost_vs_teacher DOUBLE, run_id VARCHAR, created_at TIMESTAMPTZ, n_paired BIGINT, base_score DOUBLE,
            delta_vs_base DOUBLE, delta_ci_low DOUBLE, delta_ci_high DOUBLE, change VARCHAR, judge_signal VARCHAR,
            base_judge_signal VARCHAR,
            PRIMARY KEY (adapter_version, variant, category))""",
    "model_versions": """
        CREATE TABLE IF NOT EXISTS model_versions (
            adapter_version VARCHAR PRIMARY KEY, promoted BOOLEAN, win_rate_vs_base DOUBLE, win_ci_low DOUBLE,
            win_rate_vs_teacher DOUBLE, transfer_ratio DOUBLE, failed_categories VARCHAR, reasons VARCHAR,
            severity VARCHAR, eval_run_id VARCHAR, decided_at TIMESTAMPTZ)""",
    # the partitions the IO manager wrote, in the same transaction as their rows (resources/io_manager.py):
    # reading one that is not here fails with its name instead of passing an empty frame downstream
    "_distill_partitions": """
        CREATE TABLE IF NOT EXISTS _distill_partitions (
            asset_table VARCHAR, partition_key VARCHAR, row_count BIGINT, run_id VARCHAR, written_at TIMESTAMPTZ,
            PRIMARY KEY (asset_table, partition_key))""",
    "promotion_decisions": """
        CREATE TABLE IF NOT EXISTS promotion_decisions (
            adapter_version VARCHAR PRIMARY KEY, baseline_version VARCHAR, gate_promoted BOOLEAN, promoted BOOLEAN,
            heldout_n INTEGER, heldout_candidate DOUBLE, heldout_baseline DOUBLE, eval_n INTEGER,
            eval_candidate DOUBLE, eval_baseline DOUBLE, reasons VARCHAR, resolved INTEGER, run_id VARCHAR,
            decided_at TIMESTAMPTZ)""",
}

STAGE_ORDER_SQL = "CASE stage " + " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(STAGE_ORDER)) + " ELSE 99 END"

# columns added after a table first shipped: existing databases get them on open
MIGRATIONS = [
    "ALTER TABLE teacher_calls ADD COLUMN IF NOT EXISTS budget_scope VARCHAR",
    # the paired change vs the base student (lib/evaluation/change.py) and the pairwise judge's signal
    *(f"ALTER TABLE eval_summary ADD COLUMN IF NOT EXISTS {col} {kind}" for col, kind in (
        ("n_paired", "BIGINT"), ("base_score", "DOUBLE"), ("delta_vs_base", "DOUBLE"), ("delta_ci_low", "DOUBLE"),
        ("delta_ci_high", "DOUBLE"), ("change", "VARCHAR"), ("judge_signal", "VARCHAR"),
        ("base_judge_signal", "VARCHAR"))),
    "ALTER TABLE teacher_calls ADD COLUMN IF NOT EXISTS tool_calls VARCHAR",  # JSON of the answer's tool calls
]

VIEWS: dict[str, str] = {
    # each example's last stage reached
    "lineage_latest": f"""CREATE OR REPLACE VIEW lineage_latest AS
        SELECT * EXCLUDE (stage_order) FROM (SELECT *, {STAGE_ORDER_SQL} AS stage_order FROM lineage)
        QUALIFY row_number() OVER (PARTITION BY example_id ORDER BY stage_order DESC, recorded_at DESC) = 1""",
    # the stage that dropped or quarantined each example
    "lineage_drops": f"""CREATE OR REPLACE VIEW lineage_drops AS
        SELECT * EXCLUDE (stage_order) FROM (
          SELECT *, {STAGE_ORDER_SQL} AS stage_order FROM lineage WHERE verdict <> 'kept')
        QUALIFY row_number() OVER (PARTITION BY example_id ORDER BY stage_order, recorded_at) = 1""",
    # the funnel per category and stage
    "lineage_funnel": f"""CREATE OR REPLACE VIEW lineage_funnel AS
        SELECT category, stage, min({STAGE_ORDER_SQL}) AS stage_order, count(*) AS rows_in,
               count(*) FILTER (WHERE verdict = 'kept') AS kept,
               count(*) FILTER (WHERE verdict = 'dropped') AS dropped,
               count(*) FILTER (WHERE verdict = 'quarantined') AS quarantined,
               1 - count(*) FILTER (WHERE verdict = 'kept') / count(*) AS loss
        FROM lineage GROUP BY category, stage""",
}


def schema_statements() -> list[str]:
    """Every CREATE statement, tables before the views that read them."""
    return [" ".join(s.split()) for s in [*TABLES.values(), *MIGRATIONS, *VIEWS.values()]]


def configured_store() -> dict[str, Any]:
    """Where DISTILL_STORE (and DISTILL_DATA_PATH) put the store, as the store's fields."""
    s = get_settings()
    return {"database": str(s.database), "catalog": s.store.catalog, "data_path": s.store.data_path}


def open_store(database: str | None = None, **kwargs: Any) -> DuckDBStore:
    """A store over `database` (None: the configured store, a file or a DuckLake) that creates the ledger's
    tables and views on first use."""
    kwargs.setdefault("lock_timeout_s", store_lock_timeout_s())
    where = configured_store() if database is None else {"database": str(database)}
    return DuckDBStore(**{**where, **kwargs}, schema_sql=schema_statements())


def open_io_manager(database: str | None = None, **kwargs: Any) -> DistillDuckDBIOManager:
    """The asset-table IO manager over the same store, with the ledger's tables (lineage, partitions) created."""
    kwargs.setdefault("lock_timeout_s", store_lock_timeout_s())
    where = configured_store() if database is None else {"database": str(database)}
    return DistillDuckDBIOManager(**{**where, **kwargs}, schema_sql=schema_statements())


LINEAGE_COLUMNS = ["example_id", "category", "stage", "verdict", "reason", "evidence", "run_id", "recorded_at"]


def lineage_frame(rows: pd.DataFrame, stage: str, category: str, run_id: str) -> pd.DataFrame:
    """Verdict rows in the lineage table's columns; evidence becomes JSON text."""
    if rows.empty:
        return pd.DataFrame(columns=LINEAGE_COLUMNS)
    out = pd.DataFrame(
        {
            "example_id": rows["example_id"].astype(str).to_numpy(),
            "category": category,
            "stage": stage,
            "verdict": rows["verdict"].astype(str).to_numpy(),
            "reason": rows["reason"].fillna("").astype(str).to_numpy(),
            "evidence": [e if isinstance(e, str) else json.dumps(e, default=str) for e in rows["evidence"]],
            "run_id": run_id,
            "recorded_at": utcnow(),
        }
    )
    return out.drop_duplicates(["example_id", "stage"], keep="last")


def record_lineage(store: DuckDBStore, rows: pd.DataFrame, stage: str, category: str, run_id: str) -> int:
    """Replace the verdicts of (stage, category) with `rows` (example_id, verdict, reason, evidence)."""
    frame = lineage_frame(rows, stage, category, run_id) if not rows.empty else pd.DataFrame()
    return store.replace_rows("lineage", frame, "stage = ? AND category = ?", [stage, category])


def register_artifact(store: DuckDBStore, **row: Any) -> str:
    row.setdefault("created_at", utcnow())
    if isinstance(row.get("metadata"), (dict, list)):
        row["metadata"] = json.dumps(row["metadata"], default=str)
    store.insert_df("artifacts", pd.DataFrame([row]), on_conflict="replace")
    return row["artifact_id"]
