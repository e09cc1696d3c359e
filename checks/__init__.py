"""Asset checks and pandera schemas that guard the graph: schema, contamination, dedup and yield.

Each module keeps its validation logic in plain functions returning `dg.AssetCheckResult` (unit-tested without
Dagster), builds its `@dg.asset_check` definitions with a factory, and exports them as `asset_checks`.
"""
