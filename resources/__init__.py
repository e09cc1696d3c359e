"""Dagster resources for distill: the DuckDB store and IO manager, LLM endpoints (teacher, judge), embedder."""
