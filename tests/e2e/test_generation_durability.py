"""Crash safety and parallel partitions: kill -9 mid-run, then rerun; four partitions at once on one DuckDB."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from distill_assets.lib.ledger import open_store
from resources.llm import call_key
from resources.llm_journal import replay_journals
from tests.fakes.openai_server import FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[2]

RUN = """
import sys, dagster as dg
from distill_assets.defs.resources import build_resources
from distill_assets.defs.seeds import seed_prompts
from distill_assets.defs.generation import raw_generations
from distill_assets.lib.ledger import open_store
r = dg.materialize([seed_prompts, raw_generations], resources=build_resources(), partition_key=sys.argv[1])
sys.exit(0 if r.success else 3)
"""


def _task_file(tmp_path: Path, responses: int = 30, samples: int = 4) -> Path:
    demo = ROOT / "distill_assets" / "demo"
    (tmp_path / "t.yaml").write_text(
        "categories:\n"
        + "".join(
            f"  - name: {c}\n    description: d\n    system_prompt: Be brief.\n"
            f"    seeds: {demo}/seeds/{c}.jsonl\n    eval: {demo}/eval/{c}.jsonl\n"
            f"    samples_per_prompt: {samples}\n    methods: {{response: {responses}}}\n"
            for c in ("support", "math", "code", "classify")
        )
    )
    return tmp_path / "t.yaml"


def _env(home: Path, tasks: Path, srv: FakeOpenAIServer, concurrency: int = 4) -> dict:
    env = dict(os.environ)
    env.update(DISTILL_HOME=str(home), DISTILL_TASKS=str(tasks), TEACHER_BASE_URL=srv.base_url,
               TEACHER_MODEL="fake", TEACHER_MAX_CONCURRENCY=str(concurrency), PYTHONPATH=str(ROOT))
    return env


def _key(body: dict) -> str:
    params = {k: body[k] for k in ("temperature", "max_tokens", "seed") if k in body}
    return call_key(body["model"], body["messages"], params, body.get("seed", 0))


class Recorder(FakeOpenAIServer):
    """Remembers the call key of every request, per phase of the test."""

    def __post_init__(self):
        super().__post_init__()
        self.keys: list[str] = []
        orig = self.responder

        def responder(body):
            self.keys.append(_key(body))
            return orig(body)

        self.responder = responder


def test_kill_9_then_rerun_repeats_no_call_and_loses_none(tmp_path):
    home = tmp_path / "home"
    tasks = _task_file(tmp_path)
    with Recorder(latency_s=0.05) as srv:
        env = _env(home, tasks, srv, concurrency=4)
        proc = subprocess.Popen([sys.executable, "-c", RUN, "support"], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while len(srv.keys) < 60 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        answered_before = list(srv.keys)
        # what the crashed run managed to persist (the journal is replayed at the next session's start)
        store = open_store(str(home / "distill.duckdb"))
        replay_journals(store, home / "journal")
        persisted = set(store.query_df("SELECT call_key FROM teacher_calls WHERE status = 'ok'")["call_key"])
        assert len(persisted) >= 50  # nothing that arrived was lost (a few were in flight at the kill)
        assert persisted <= set(answered_before)
        srv.keys.clear()
        rerun = subprocess.run([sys.executable, "-c", RUN, "support"], env=env, cwd=ROOT, capture_output=True,
                               timeout=300)
        assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
        repeated = persisted & set(srv.keys)
        assert not repeated, f"{len(repeated)} call(s) already persisted were paid for again"
    con = duckdb.connect(str(home / "distill.duckdb"), read_only=True)
    n = con.execute("SELECT count(*) FROM raw_generations WHERE category = 'support'").fetchall()[0][0]
    assert n == 30 * 4  # every row arrived


def test_four_partitions_in_parallel_multiprocess_executor(tmp_path):
    import dagster as dg

    home = tmp_path / "home"
    tasks = _task_file(tmp_path, responses=10, samples=2)
    with FakeOpenAIServer(latency_s=0.02) as srv:
        env = _env(home, tasks, srv, concurrency=8)
        dagster_home = tmp_path / "dh"
        dagster_home.mkdir()
        (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        env["DAGSTER_HOME"] = str(dagster_home)
        # create the instance's sqlite storage once: four processes migrating it at once race in alembic
        from dagster._core.instance.ref import InstanceRef

        with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(dagster_home))) as inst:
            inst.get_runs(limit=1)
        script = (
            "import sys, dagster as dg\n"
            "from tests.fakes.graph_job import generation_job\n"
            "inst = dg.DagsterInstance.get()\n"
            "r = dg.execute_job(dg.reconstructable(generation_job), instance=inst, tags={'dagster/partition': sys.argv[1]})\n"
            "sys.exit(0 if r.success else 3)\n"
        )
        procs = [subprocess.Popen([sys.executable, "-c", script, c], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT) for c in ("support", "math", "code", "classify")]
        outs = [p.communicate(timeout=600)[0].decode() for p in procs]
        for p, out in zip(procs, outs):
            assert p.returncode == 0, out[-3000:]
            assert "Could not set lock" not in out
    con = duckdb.connect(str(home / "distill.duckdb"), read_only=True)
    counts = dict(con.execute("SELECT category, count(*) FROM raw_generations GROUP BY 1").fetchall())
    assert counts == {"support": 20, "math": 20, "code": 20, "classify": 20}


def test_partition_write_is_atomic_on_crash(tmp_path):
    """A failure between DELETE and INSERT must leave the old partition intact (stock dagster-duckdb empties it)."""
    from resources.store import locked_connection

    db = str(tmp_path / "a.duckdb")
    with locked_connection(db) as c:
        c.execute("CREATE TABLE t AS SELECT 'a' AS category, 1 AS v")
    with pytest.raises(RuntimeError):
        with locked_connection(db) as c:
            c.execute("DELETE FROM t WHERE category = 'a'")
            raise RuntimeError("crash between delete and insert")
    with locked_connection(db) as c:
        assert c.execute("SELECT count(*) FROM t").fetchall()[0][0] == 1
