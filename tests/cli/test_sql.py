"""`distill sql`: every ledger view the docs name answers on a fresh database, only reads are accepted, and a
query waits for a running step's lock, then fails naming the holder."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from distill_assets.cli.errors import UsageError
from distill_assets.cli.sql import read_statements
from distill_assets.lib import ledger

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _distill(args: list[str], home: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "DISTILL_HOME": str(home), "DAGSTER_HOME": str(home / "dagster_home")}
    return subprocess.run([sys.executable, "-m", "distill_assets.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _documented_views() -> set[str]:
    words = {w for p in DOCS for w in re.findall(r"\b(lineage_[a-z_]+)\b", p.read_text())}
    return words | {w for w in ledger.VIEWS if any(w in p.read_text() for p in DOCS)}


def test_every_documented_view_answers_on_a_fresh_database(tmp_path):
    views = _documented_views()
    assert {"lineage_funnel", "lineage_latest", "lineage_drops"} <= views
    assert views <= set(ledger.VIEWS), f"the docs name views the ledger does not create: {views - set(ledger.VIEWS)}"
    home = tmp_path / "fresh"
    query = "; ".join(f"select * from {v}" for v in sorted(views))
    proc = _distill(["sql", query], home)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("(no rows)") == len(views)
    proc = _distill(["sql", "select count(*) AS n from lineage_funnel", "--json"], home)
    assert proc.returncode == 0 and json.loads(proc.stdout) == [{"n": 0}]


def test_only_reads_are_accepted(tmp_path):
    assert len(read_statements("with a as (select 1) select * from a; describe lineage; show tables")) == 3
    for bad in ("delete from lineage", "select 1; drop table lineage", "pragma version",
                "copy lineage to '/tmp/x.csv'", "attach 'x.duckdb'", "install httpfs"):
        with pytest.raises(UsageError, match="read-only"):
            read_statements(bad)
    proc = _distill(["sql", "update lineage set verdict = 'kept'"], tmp_path / "h")
    assert proc.returncode == 2 and "statement 1 is UPDATE" in proc.stderr
    proc = _distill(["sql", "select * from read_csv('/etc/hostname')"], tmp_path / "h")
    assert proc.returncode == 2 and "disabled by configuration" in proc.stderr  # no file access either


def test_a_query_waits_then_names_the_running_step(tmp_path):
    home = tmp_path / "busy"
    db = home / "distill.duckdb"
    ledger.open_store(str(db)).execute("SELECT 1")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from resources.store import locked_connection
        with locked_connection(sys.argv[1]):
            print("holding", flush=True)
            time.sleep(60)
        """), str(db), "materialize-step"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        proc = _distill(["sql", "select 1", "--timeout", "1"], home)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert f"held by pid {holder.pid} on " in proc.stderr and "materialize-step" in proc.stderr
    finally:
        holder.kill()
        holder.wait()
    proc = _distill(["sql", "select 42 AS answer"], home)
    assert proc.returncode == 0 and "42" in proc.stdout and "(1 row)" in proc.stdout
