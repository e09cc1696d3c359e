"""The IO manager: a filter stage's table rows and lineage verdicts in one transaction (a kill -9 between the
two writes leaves both old), and a never-materialized upstream partition is an error naming it, while an
empty one stays an empty frame."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from distill_assets.defs.partitions import CATEGORY
from distill_assets.defs.stage_output import publish_stage
from distill_assets.lib.ledger import open_io_manager, open_store
from distill_assets.lib.stages import annotate
from resources.io_manager import write_table
from resources.store import DuckDBStore, locked_connection

REPO = Path(__file__).resolve().parents[2]
CAT = CATEGORY.get_partition_keys()[0]

# A stand-in upstream and a real stage (publish_stage) that keeps even rows; N rows come from argv.
GRAPH = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import dagster as dg
    import pandas as pd
    from distill_assets.defs.partitions import CATEGORY
    from distill_assets.defs.stage_output import publish_stage
    from distill_assets.lib.ledger import open_io_manager, open_store
    from distill_assets.lib.stages import annotate, kept
    from resources import io_manager
    from resources.store import DuckDBStore

    db, n, cat, flag = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

    @dg.asset(name="raw_generations", partitions_def=CATEGORY, metadata={"partition_expr": "category"})
    def raw(context) -> pd.DataFrame:
        return pd.DataFrame({"example_id": [f"e{i}" for i in range(n)], "category": context.partition_key})

    @dg.asset(name="quality_filtered", ins={"raw": dg.AssetIn("raw_generations")}, partitions_def=CATEGORY,
              metadata={"partition_expr": "category"})
    def stage(context: dg.AssetExecutionContext, store: DuckDBStore, raw: pd.DataFrame):
        rows = kept(raw)
        out = annotate(rows, [i % 2 == 0 for i in range(len(rows))], [""] * len(rows), [{}] * len(rows))
        return publish_stage(context, store, out, stage="quality_filtered")

    real = io_manager.write_lineage

    def paused(conn, stage, keys, database):
        if flag != "-" and stage.stage == "quality_filtered":
            Path(flag).write_text("table written, lineage next")
            time.sleep(600)
        real(conn, stage, keys, database)

    io_manager.write_lineage = paused
    res = dg.materialize([raw, stage], partition_key=cat,
                         resources={"store": open_store(db), "io_manager": open_io_manager(db)})
    sys.exit(0 if res.success else 1)
""")


def _state(db: str) -> tuple[int, int]:
    store = open_store(db)
    table = store.query_df("SELECT count(*) AS n FROM quality_filtered")["n"][0] if store.table_exists(
        "quality_filtered") else 0
    lineage = store.query_df("SELECT count(*) AS n FROM lineage WHERE stage = 'quality_filtered'")["n"][0]
    return int(table), int(lineage)


def _run(db: str, n: int, flag: str = "-") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", GRAPH, db, str(n), CAT, flag], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _kill_at_flag(proc: subprocess.Popen, flag: Path) -> None:
    deadline = time.monotonic() + 240
    while not flag.exists():
        assert proc.poll() is None, f"the child exited before the lineage write: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "the child never reached the lineage write"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)


def test_kill_9_between_table_and_lineage_leaves_both_or_neither(tmp_path, distill_home):
    db = str(tmp_path / "d.duckdb")
    first = tmp_path / "first"
    _kill_at_flag(_run(db, 4, str(first)), first)
    assert _state(db) == (0, 0)  # neither: the first write never committed

    proc = _run(db, 4)
    assert proc.wait(240) == 0, proc.stderr.read()[-2000:]
    assert _state(db) == (4, 4)  # both

    second = tmp_path / "second"
    _kill_at_flag(_run(db, 6, str(second)), second)
    assert _state(db) == (4, 4)  # both old: the new table rows rolled back with the missing verdicts


def _stage_graph():
    @dg.asset(name="decontaminated", partitions_def=CATEGORY, metadata={"partition_expr": "category"})
    def upstream(context) -> pd.DataFrame:
        n = 0 if context.partition_key == CAT else 2
        return pd.DataFrame({"example_id": [f"{context.partition_key}{i}" for i in range(n)],
                             "category": pd.Series([context.partition_key] * n, dtype=str)})

    @dg.asset(name="clean_dataset", ins={"decontaminated": dg.AssetIn()}, partitions_def=CATEGORY,
              metadata={"partition_expr": "category"})
    def downstream(context: dg.AssetExecutionContext, store: DuckDBStore, decontaminated: pd.DataFrame):
        out = annotate(decontaminated, [True] * len(decontaminated), [""] * len(decontaminated),
                       [{}] * len(decontaminated))
        return publish_stage(context, store, out, stage="clean_dataset")

    return upstream, downstream


def test_missing_upstream_partition_is_an_error_and_an_empty_one_is_empty(duck_resources, store):
    upstream, downstream = _stage_graph()
    other = CATEGORY.get_partition_keys()[1]
    res = dg.materialize([upstream, downstream], selection=[downstream], partition_key=other,
                         resources=duck_resources, raise_on_error=False)
    assert not res.success
    err = next(e for e in res.all_events if e.is_step_failure).step_failure_data.error
    assert f"decontaminated[{other}] has never been materialized" in str(err.message) + str(err.cause)

    assert dg.materialize([upstream], partition_key=CAT, resources=duck_resources).success  # 0 rows
    res = dg.materialize([upstream, downstream], selection=[downstream], partition_key=CAT,
                         resources=duck_resources)
    assert res.success and res.asset_materializations_for_node("clean_dataset")[0].metadata["rows"].value == 0
    marks = store.query_df("SELECT * FROM _distill_partitions WHERE asset_table = 'main.decontaminated'")
    assert marks[["partition_key", "row_count"]].values.tolist() == [[CAT, 0]]


def test_a_table_written_before_partitions_were_recorded_still_reads(duck_resources, db_path):
    with locked_connection(db_path) as conn:  # an older database: the table, no markers
        write_table(conn, "main", "decontaminated", pd.DataFrame({"example_id": ["x"], "category": [CAT]}),
                    "category", [CAT])
    _, downstream = _stage_graph()
    upstream = dg.AssetSpec("decontaminated", partitions_def=CATEGORY, metadata={"partition_expr": "category"})
    res = dg.materialize([upstream, downstream], selection=[downstream], partition_key=CAT,
                         resources=duck_resources)
    assert res.asset_materializations_for_node("clean_dataset")[0].metadata["rows"].value == 1


def test_without_the_ledger_schema_the_io_manager_says_so(tmp_path):
    from resources.io_manager import DistillDuckDBIOManager

    db = str(tmp_path / "bare.duckdb")

    @dg.asset(name="eval_set")
    def a() -> pd.DataFrame:
        return pd.DataFrame({"x": [1]})

    with pytest.raises(Exception, match="open_io_manager"):
        dg.materialize([a], resources={"io_manager": DistillDuckDBIOManager(database=db)})
    assert json.dumps(open_io_manager(db).schema_sql)  # the ledger's statements travel with the resource
