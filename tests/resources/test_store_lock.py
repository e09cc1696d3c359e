"""The store's lock: a wait that runs out names the holder (pid, host, command), and a process outside the
store lock that holds DuckDB's own file lock (as the duckdb CLI does) is waited for with backoff, then named."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from distill_assets.lib.ledger import open_store
from resources.store import lock_holder, locked_connection, read_only_connection

REPO = Path(__file__).resolve().parents[2]

HOLD_STORE = textwrap.dedent("""
    import sys, time
    from resources.store import locked_connection
    with locked_connection(sys.argv[1]):
        print("holding", flush=True)
        time.sleep(float(sys.argv[2]))
""")

# what the duckdb CLI does: opens the file read-write and keeps it, outside distill's lock
HOLD_DUCKDB = textwrap.dedent("""
    import sys, time, duckdb
    conn = duckdb.connect(sys.argv[1])
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
    conn.close()
""")


def _hold(script: str, db: str, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", script, db, str(seconds), "--marker-arg"], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding"
    return proc


@pytest.fixture
def db(tmp_path) -> str:
    path = str(tmp_path / "d.duckdb")
    open_store(path).execute("SELECT 1")
    return path


def test_the_holder_says_who_it_is_and_a_timeout_names_it(db):
    with locked_connection(db):
        me = lock_holder(db + ".lock")
        assert me.startswith(f"pid {os.getpid()} on ") and "exclusive" in me
    assert lock_holder(db + ".lock") == ""  # released: nobody

    proc = _hold(HOLD_STORE, db, 30)
    try:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError) as e:
            with locked_connection(db, lock_timeout_s=1.0):
                pass
        assert 1.0 <= time.monotonic() - t0 < 10
        msg = str(e.value)
        assert f"pid {proc.pid} on " in msg and "--marker-arg" in msg and "waited 1s" in msg
        with pytest.raises(TimeoutError, match=f"pid {proc.pid}"):
            with read_only_connection(db, 0.5):
                pass
    finally:
        proc.kill()
        proc.wait()
    with locked_connection(db, lock_timeout_s=5.0) as conn:  # the dead holder's flock went with it
        assert conn.execute("SELECT 1").fetchall() == [(1,)]


def test_an_outside_duckdb_process_is_waited_for_then_named(db):
    proc = _hold(HOLD_DUCKDB, db, 30)
    try:
        with pytest.raises(TimeoutError) as e:
            with locked_connection(db, lock_timeout_s=1.5):
                pass
        msg = str(e.value)
        assert f"(pid {proc.pid}: {sys.executable} -c " in msg and "duckdb.connect" in msg and "has the file open" in msg
    finally:
        proc.kill()
        proc.wait()

    proc = _hold(HOLD_DUCKDB, db, 1.5)  # lets go within the bound: the store's open retries and succeeds
    try:
        t0 = time.monotonic()
        with locked_connection(db, lock_timeout_s=60) as conn:
            assert conn.execute("SELECT count(*) FROM lineage").fetchall() == [(0,)]
        assert time.monotonic() - t0 >= 0.5
    finally:
        proc.wait(30)


def test_readers_share_the_lock(db):
    with read_only_connection(db, 1.0) as a, read_only_connection(db, 1.0) as b:
        assert a.execute("SELECT 1").fetchall() == [(1,)] and b.execute("SELECT 2").fetchall() == [(2,)]
