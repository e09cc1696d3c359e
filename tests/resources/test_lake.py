"""DuckLake on a real throwaway Postgres catalog: load offline, write/read, snapshots, and concurrent commits.

Needs the Postgres server binaries (`apt-get install -y postgresql`) and DuckDB with its matching extension
packages (`pip install duckdb==1.5.5 duckdb-extension-ducklake==1.5.5 duckdb-extension-postgres-scanner==1.5.5`);
those tests skip with the reason otherwise. The retry policy's own tests need neither.
"""

from __future__ import annotations

import multiprocessing as mp
import uuid
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from resources import lake
from tests.fakes.postgres_server import PostgresServer, postgres_available

PG_OK, PG_WHY = postgres_available()
LAKE_OK, LAKE_WHY = lake.ducklake_extensions_available()
needs_lake = pytest.mark.skipif(not (PG_OK and LAKE_OK), reason=PG_WHY if not PG_OK else LAKE_WHY)

CONFLICT = "Failed to commit DuckLake transaction.\nTransaction conflict - attempting to insert into table"


# -- the retry policy (no Postgres needed) ------------------------------------------------------------------
def test_run_with_retry_retries_only_commit_conflicts():
    calls, slept = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise duckdb.TransactionException(CONFLICT)
        return "landed"

    assert lake.run_with_retry(flaky, attempts=5, backoff=0.1, sleep=slept.append) == "landed"
    assert len(calls) == 3 and len(slept) == 2
    assert all(0 <= s <= 0.1 * 2 ** i for i, s in enumerate(slept))  # jittered, exponential cap

    def broken():
        calls.append(1)
        raise duckdb.CatalogException("Catalog Error: Table with name nope does not exist!")

    calls.clear()
    with pytest.raises(duckdb.CatalogException):
        lake.run_with_retry(broken, attempts=5, sleep=slept.append)
    assert len(calls) == 1  # not a conflict: no second try


def test_run_with_retry_gives_up_with_the_last_conflict():
    def always():
        raise duckdb.TransactionException(CONFLICT)

    with pytest.raises(lake.CommitConflictError, match=r"gave up after 3 conflicting commits; last: Transaction"):
        lake.run_with_retry(always, attempts=3, sleep=lambda s: None)


def test_upsert_rejects_missing_keys_and_bad_modes():
    con = duckdb.connect()
    with pytest.raises(ValueError, match=r"key columns \['stage'\] are not in the frame"):
        lake.upsert_df(con, "lineage", pd.DataFrame({"example_id": ["a"]}), ["example_id", "stage"])
    with pytest.raises(ValueError, match="on_conflict must be"):
        lake.upsert_df(con, "lineage", pd.DataFrame({"k": ["a"]}), ["k"], on_conflict="error")


# -- against a real catalog -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pg():
    if not (PG_OK and LAKE_OK):
        pytest.skip(PG_WHY if not PG_OK else LAKE_WHY)
    with PostgresServer() as server:
        yield server


@pytest.fixture
def lake_at(pg, tmp_path):
    """(catalog dsn, data path) of a fresh lake: its own Postgres database, its own Parquet folder."""
    dsn = pg.new_database("lake_" + uuid.uuid4().hex[:10])
    return dsn, str(tmp_path / "data")


@needs_lake
def test_extensions_load_from_packages_without_network(lake_at):
    con = lake.connect_ducklake(*lake_at)
    loaded = dict(con.execute("SELECT extension_name, install_mode FROM duckdb_extensions() WHERE loaded").fetchall())
    assert {"ducklake", "postgres_scanner"} <= loaded.keys()
    assert con.execute("SELECT current_setting('autoinstall_known_extensions'), "
                       "current_setting('allow_unsigned_extensions'), current_database()").fetchone() == (
        False, False, "lake")  # signed binaries, nothing fetched, the lake is the default catalog


@needs_lake
def test_write_read_project_types(lake_at):
    con = lake.connect_ducklake(*lake_at)
    con.execute("CREATE TABLE IF NOT EXISTS embeddings (model VARCHAR, text_hash VARCHAR, vector FLOAT[], "
                "created_at TIMESTAMPTZ)")
    con.execute("ALTER TABLE embeddings ADD COLUMN IF NOT EXISTS note VARCHAR")
    rows = pd.DataFrame({"model": ["m"] * 20, "text_hash": [f"h{i}" for i in range(20)],
                         "vector": [[float(i), 0.5] for i in range(20)],
                         "created_at": pd.Timestamp("2026-01-02T03:04:05Z")})
    with lake.transaction(con):
        assert lake.replace_rows(con, "embeddings", rows, "model = ?", ["m"]) == 20
    back = con.execute("SELECT * FROM embeddings ORDER BY text_hash").df()
    assert len(back) == 20 and list(back["vector"].iloc[1]) == [1.0, 0.5]
    assert back["created_at"].iloc[0] == pd.Timestamp("2026-01-02T03:04:05Z") and back["note"].isna().all()
    assert lake.table_exists(con, "embeddings") and not lake.table_exists(con, "nope")
    con.register("frame_not_table", rows)  # a registered frame is a temp view, not a lake table
    assert not lake.table_exists(con, "frame_not_table")


@needs_lake
def test_primary_keys_are_unsupported_and_upsert_replaces_them(lake_at):
    con = lake.connect_ducklake(*lake_at)
    with pytest.raises(duckdb.NotImplementedException, match="PRIMARY KEY/UNIQUE constraints are not supported"):
        con.execute("CREATE TABLE artifacts (artifact_id VARCHAR PRIMARY KEY, path VARCHAR)")
    con.execute("CREATE TABLE artifacts (artifact_id VARCHAR, path VARCHAR, bytes BIGINT)")
    with pytest.raises(duckdb.BinderException, match="no UNIQUE/PRIMARY KEY constraints"):
        con.execute("INSERT OR REPLACE INTO artifacts VALUES ('a', 'x', 1)")
    lake.ensure_guard(con, "artifacts")
    first = pd.DataFrame({"artifact_id": ["a", "b", "b"], "path": ["a1", "b1", "b2"], "bytes": [1, 2, 3]})
    with lake.transaction(con):
        lake.guard(con, "artifacts")
        assert lake.upsert_df(con, "artifacts", first, ["artifact_id"]) == 2  # a repeated key keeps the last
    later = pd.DataFrame({"artifact_id": ["b", "c"], "path": ["b3", "c1"], "bytes": [4, 5]})
    lake.upsert_df(con, "artifacts", later, ["artifact_id"], on_conflict="ignore")
    assert con.execute("SELECT * FROM artifacts ORDER BY 1").fetchall() == [("a", "a1", 1), ("b", "b2", 3),
                                                                          ("c", "c1", 5)]
    lake.upsert_df(con, "artifacts", later, ["artifact_id"], on_conflict="replace")
    assert con.execute("SELECT path FROM artifacts ORDER BY 1").fetchall() == [("a1",), ("b3",), ("c1",)]


@needs_lake
def test_snapshot_ids_and_time_travel(lake_at):
    con = lake.connect_ducklake(*lake_at)
    con.execute("CREATE TABLE t (category VARCHAR, i BIGINT)")
    con.execute("INSERT INTO t SELECT 'a', range FROM range(50)")
    before = lake.current_snapshot(con)
    with lake.transaction(con):
        lake.set_commit_message(con, "distill", "replace a", extra_info='{"run_id": "r1"}')
        lake.replace_rows(con, "t", pd.DataFrame({"category": ["a"] * 3, "i": [7, 8, 9]}), "category = ?", ["a"])
    after = lake.current_snapshot(con)
    assert after == before + 1 == lake.last_committed_snapshot(con)  # one transaction, one snapshot
    other = lake.connect_ducklake(*lake_at)
    assert lake.last_committed_snapshot(other) is None
    other.execute("INSERT INTO t VALUES ('b', 1)")  # another writer moves the lake, not our last commit
    assert lake.current_snapshot(con) == after + 1 and lake.last_committed_snapshot(con) == after
    assert con.execute(f"SELECT count(*) FROM t AT (VERSION => {before})").fetchone()[0] == 50
    assert con.execute(f"SELECT count(*) FROM t AT (VERSION => {after})").fetchone()[0] == 3
    ours = lake.snapshots(con).set_index("snapshot_id").loc[after]
    assert "tables_deleted_from" in ours["changes"]
    assert (ours["author"], ours["commit_message"], ours["commit_extra_info"]) == ("distill", "replace a",
                                                                                 '{"run_id": "r1"}')


@needs_lake
def test_concurrent_replace_conflicts_and_retry_resolves_it(lake_at):
    a, b = lake.connect_ducklake(*lake_at), lake.connect_ducklake(*lake_at)
    a.execute("CREATE TABLE t (category VARCHAR, i BIGINT, writer VARCHAR)")
    a.execute("INSERT INTO t SELECT 'a', range, 'seed' FROM range(100)")
    b_attempts = []

    def b_replace():
        b_attempts.append(1)
        with lake.transaction(b):
            lake.replace_rows(b, "t", pd.DataFrame({"category": ["a"] * 5, "i": range(5), "writer": "b"}),
                              "category = ?", ["a"])
            if len(b_attempts) == 1:  # a commits its own replace while b's first try is still open
                with lake.transaction(a):
                    lake.replace_rows(a, "t", pd.DataFrame({"category": ["a"] * 7, "i": range(7), "writer": "a"}),
                                      "category = ?", ["a"])

    with pytest.raises(duckdb.TransactionException, match="Transaction conflict") as raised:
        b_replace()
    assert lake.is_commit_conflict(raised.value)
    b_attempts.clear()
    lake.run_with_retry(b_replace, sleep=lambda s: None)
    assert len(b_attempts) == 2  # the retry landed on top of a's commit
    assert b.execute("SELECT writer, count(*) FROM t GROUP BY 1").fetchall() == [("b", 5)]


@needs_lake
def test_unguarded_first_inserts_duplicate_and_the_guard_stops_it(lake_at):
    a, b = lake.connect_ducklake(*lake_at), lake.connect_ducklake(*lake_at)
    a.execute("CREATE TABLE lineage (example_id VARCHAR, stage VARCHAR, verdict VARCHAR)")
    lake.ensure_guard(a, "lineage")
    row = pd.DataFrame({"example_id": ["e1"], "stage": ["dedup"], "verdict": ["kept"]})

    def both_write(guarded: bool) -> str:
        for con in (a, b):
            con.execute("BEGIN TRANSACTION")
            if guarded:
                lake.guard(con, "lineage")
            lake.upsert_df(con, "lineage", row, ["example_id", "stage"])
        a.execute("COMMIT")
        try:
            b.execute("COMMIT")
            return "both landed"
        except duckdb.TransactionException as exc:
            assert lake.is_commit_conflict(exc)
            return "conflict"

    assert both_write(guarded=False) == "both landed"  # inserts never collide: the key is now in twice
    assert a.execute("SELECT count(*) FROM lineage").fetchone()[0] == 2
    a.execute("DELETE FROM lineage")
    assert both_write(guarded=True) == "conflict"
    assert a.execute("SELECT count(*) FROM lineage").fetchone()[0] == 1


def _writer(dsn: str, data: str, writer: int, txns: int, barrier, results) -> None:
    """One process: `txns` partition replaces of t + guarded lineage upserts, all with retry."""
    con = lake.connect_ducklake(dsn, data, threads=1)
    conflicts, committed = 0, []
    for j in range(txns):
        category = f"c{j % 2}"  # every writer hits the same two partitions
        t_rows = pd.DataFrame({"category": category, "i": range(30), "writer": writer, "txn": j})
        l_rows = pd.DataFrame({"example_id": [f"e{j}_{k}" for k in range(5)], "stage": "dedup", "writer": writer})
        tries = []

        def commit():
            tries.append(1)
            with lake.transaction(con):
                lake.guard(con, "lineage")
                lake.replace_rows(con, "t", t_rows, "category = ?", [category])
                lake.upsert_df(con, "lineage", l_rows, ["example_id", "stage"])
                if j == 0 and len(tries) == 1:
                    barrier.wait(timeout=120)  # every writer holds an open transaction: all but one must lose

        lake.run_with_retry(commit, attempts=30, backoff=0.02, max_backoff=0.5)
        conflicts += len(tries) - 1
        committed.append(lake.last_committed_snapshot(con))
    results.put((writer, conflicts, committed))
    con.close()


@needs_lake
def test_processes_writing_one_table_lose_nothing_and_duplicate_nothing(lake_at):
    dsn, data = lake_at
    con = lake.connect_ducklake(dsn, data)
    con.execute("CREATE TABLE t (category VARCHAR, i BIGINT, writer BIGINT, txn BIGINT)")
    con.execute("CREATE TABLE lineage (example_id VARCHAR, stage VARCHAR, writer BIGINT)")
    lake.ensure_guard(con, "lineage")
    start = lake.current_snapshot(con)
    writers, txns = 3, 4
    ctx = mp.get_context("spawn")  # a forked DuckDB with live threads is unsafe
    barrier, results = ctx.Barrier(writers), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(dsn, data, w, txns, barrier, results)) for w in range(writers)]
    for p in procs:
        p.start()
    got = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sum(conflicts for _, conflicts, _ in got) >= writers - 1  # the barrier forced these; all recovered
    # every transaction committed exactly once: one snapshot each, none shared, none extra
    ids = sorted(i for _, _, committed in got for i in committed)
    assert ids == list(range(start + 1, start + writers * txns + 1)) == list(range(start + 1,
                                                                                 lake.current_snapshot(con) + 1))
    # each partition holds exactly one commit's rows: the last replace won whole, nothing interleaved
    per_cat = con.execute("SELECT category, count(*), count(DISTINCT (writer, txn)) FROM t GROUP BY 1 "
                          "ORDER BY 1").fetchall()
    assert per_cat == [("c0", 30, 1), ("c1", 30, 1)]
    keys = con.execute("SELECT count(*), count(DISTINCT (example_id, stage)) FROM lineage").fetchone()
    assert keys == (txns * 5, txns * 5)  # every key once although all writers wrote every key
    # losers' Parquet files were removed on rollback: every file on disk is one the catalog knows
    on_disk = sum(1 for f in Path(data).rglob("*") if f.is_file())
    known = con.execute("SELECT (SELECT count(*) FROM __ducklake_metadata_lake.ducklake_data_file) + "
                        "(SELECT count(*) FROM __ducklake_metadata_lake.ducklake_delete_file)").fetchone()[0]
    assert on_disk == known
