"""Smoke tests of the `distill` console script: every subcommand's --help, real runs, and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

COMMANDS = [
    [], ["quickstart"], ["ui"], ["materialize"], ["backfill"], ["lineage"], ["lineage", "why"], ["lineage", "from"],
    ["failures"], ["failures", "add"], ["failures", "list"], ["report"], ["report", "open"], ["sql"],
    ["batch"], ["batch", "export-requests"], ["batch", "import-results"],
    ["export"], ["export", "dataset"],
]


def _distill(args: list[str], home: Path, timeout: int = 300, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "DISTILL_HOME": str(home), "DAGSTER_HOME": str(home / "dagster_home"), **env}
    full_env.pop("TEACHER_BASE_URL", None)
    return subprocess.run([sys.executable, "-m", "distill_assets.cli", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("distill")]
    assert lines, proc.stderr
    return lines[-1]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "distill")
def test_help(cmd, tmp_path):
    proc = _distill([*cmd, "--help"], tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: distill")


def test_help_is_fast_and_imports_no_dagster(tmp_path):
    code = ("import sys, contextlib, io\nfrom distill_assets import cli\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try: cli.main(['materialize', '--help'])\n"
            "    except SystemExit: pass\n"
            "print('dagster' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False False", out.stderr


def test_no_command_and_unknown_command_exit_2(tmp_path):
    for args in ([], ["frobnicate"]):
        proc = _distill(args, tmp_path, timeout=60)
        assert proc.returncode == 2
        assert "usage: distill" in proc.stderr


def test_materialize_unknown_category_and_asset(tmp_path):
    proc = _distill(["materialize", "--category", "nope"], tmp_path)
    assert proc.returncode == 2
    line = _one_line_error(proc)
    assert "unknown category 'nope'" in line and "math" in line
    proc = _distill(["materialize", "--category", "math", "--select", "no_such_asset"], tmp_path)
    assert proc.returncode == 2
    assert "unknown asset(s): no_such_asset" in _one_line_error(proc)
    proc = _distill(["materialize"], tmp_path)
    assert proc.returncode == 2 and "--category" in _one_line_error(proc)


def test_bad_tasks_file_is_a_clear_error(tmp_path):
    proc = _distill(["materialize", "--category", "math", "--tasks", str(tmp_path / "missing.yaml")], tmp_path)
    assert proc.returncode == 2
    assert "task file not found" in _one_line_error(proc)


def test_materialize_seed_prompts_one_category(tmp_path):
    proc = _distill(["materialize", "--category", "math", "--select", "seed_prompts"], tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "materialized 1 asset(s) in 1 run(s)" in proc.stdout
    import duckdb

    con = duckdb.connect(str(tmp_path / "distill.duckdb"), read_only=True)
    cats = {r[0] for r in con.execute("SELECT DISTINCT category FROM seed_prompts").fetchall()}
    con.close()
    assert cats == {"math"}
    # The run is in the persistent Dagster instance, so the UI shows it afterwards.
    import dagster as dg

    with dg.DagsterInstance.from_config(str(tmp_path / "dagster_home")) as inst:
        runs = inst.get_runs()
        assert len(runs) == 1 and runs[0].tags.get("dagster/partition") == "math"
        assert runs[0].status == dg.DagsterRunStatus.SUCCESS
    assert "enabled: false" in (tmp_path / "dagster_home" / "dagster.yaml").read_text()


def test_batch_export_run_import_for_an_offline_runner(tmp_path):
    from tests.lib.test_offline_batch import run_batch_file

    req, res = tmp_path / "requests.jsonl", tmp_path / "results.jsonl"
    proc = _distill(["batch", "export-requests", "math", str(req)], tmp_path, TEACHER_MODEL="m")
    assert proc.returncode == 2 and "no seed_prompts for math yet" in _one_line_error(proc)
    from distill_assets.lib.ledger import open_store
    from distill_assets.lib.records import load_seed_file
    from distill_assets.lib.tasks import load_tasks

    math = load_tasks().category("math")  # what `distill materialize -c math -s seed_prompts` writes
    open_store(str(tmp_path / "distill.duckdb")).insert_df("seed_prompts", load_seed_file(math.seeds, math))
    proc = _distill(["batch", "export-requests", "math", str(req)], tmp_path)
    assert proc.returncode == 2 and "set TEACHER_MODEL" in _one_line_error(proc)
    proc = _distill(["batch", "export-requests", "math", str(req)], tmp_path, TEACHER_MODEL="m")
    assert proc.returncode == 0, proc.stderr[-2000:]
    n = len(req.read_text().splitlines())
    assert n > 1 and f"{n} request(s) of generation phase 1 of math" in proc.stdout
    assert f"vllm run-batch -i {req} -o results.jsonl --model m" in proc.stdout
    run_batch_file(req, res)
    proc = _distill(["batch", "import-results", str(req), str(res), "-c", "math"], tmp_path, TEACHER_MODEL="m")
    assert proc.returncode == 0 and f"{n} answer(s) recorded in teacher_calls" in proc.stdout, proc.stderr[-2000:]
    proc = _distill(["batch", "export-requests", "math", str(req)], tmp_path, TEACHER_MODEL="m")
    # the evolved instructions of phase 1's answers
    assert proc.returncode == 0 and "request(s) of generation phase 2 of math" in proc.stdout, proc.stdout


def test_backfill_unknown_category(tmp_path):
    proc = _distill(["backfill", "--category", "nope"], tmp_path)
    assert proc.returncode == 2 and "unknown category" in _one_line_error(proc)


def test_backfill_is_stored_in_the_instance(tmp_path):
    # Without --wait the backfill is only requested: the daemon of `dagster dev` / `dagster-daemon run` runs it.
    proc = _distill(["backfill", "--category", "math", "--select", "seed_prompts"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no backfill daemon is running" in proc.stdout
    backfill_id = proc.stdout.split()[1].rstrip(":")
    import dagster as dg

    with dg.DagsterInstance.from_config(str(tmp_path / "dagster_home")) as inst:
        b = inst.get_backfill(backfill_id)
        assert b is not None and b.status.value == "REQUESTED"
        assert b.is_asset_backfill
        assert [k.to_user_string() for k in b.asset_selection] == ["seed_prompts"]


def test_lineage_unknown_id(tmp_path):
    for action in ("why", "from"):
        proc = _distill(["lineage", action, "deadbeef"], tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert "deadbeef" in _one_line_error(proc)


def test_failures_add_and_list(tmp_path):
    f = tmp_path / "failures.jsonl"
    rows = [{"category": "math", "input": f"What is {i} + {i}?", "bad_output": "I don't know",
             "expected": str(2 * i)} for i in range(1, 4)]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    proc = _distill(["failures", "add", str(f)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "3 new failure(s)" in proc.stdout and "1 rejected" in proc.stdout
    assert f"{f}:4" in proc.stderr  # the reject names file and line
    proc = _distill(["failures", "list", "--category", "math", "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    assert len(listed) == 3 and {r["category"] for r in listed} == {"math"}
    proc = _distill(["failures", "list"], tmp_path)
    assert proc.returncode == 0 and "3 failure(s)" in proc.stdout
    # Bad input: unknown status / category / missing file, each one line, exit 2.
    for args, needle in ((["failures", "list", "--status", "bogus"], "unknown status"),
                         (["failures", "list", "--category", "nope"], "unknown category"),
                         (["failures", "add", str(tmp_path / "missing.jsonl")], "no such file")):
        proc = _distill(args, tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)
        assert needle in _one_line_error(proc)


def test_failures_list_empty_store(tmp_path):
    proc = _distill(["failures", "list"], tmp_path)
    assert proc.returncode == 0 and "no failures reported yet" in proc.stdout


def test_report_open_without_report(tmp_path):
    proc = _distill(["report", "open"], tmp_path)
    assert proc.returncode == 1
    line = _one_line_error(proc)
    assert "no HTML report" in line and str(tmp_path / "reports") in line


def test_report_open_prints_latest(tmp_path):
    reports = tmp_path / "reports"
    reports.mkdir()
    old, new = reports / "old.html", reports / "sub" / "new.html"
    new.parent.mkdir()
    old.write_text("<html></html>")
    new.write_text("<html></html>")
    os.utime(old, (1, 1))
    proc = _distill(["report", "open"], tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == str(new)


def test_quickstart_runner_orders_stages_times_them_and_fails_clearly():
    """The runner behind `quickstart`/`materialize` on a toy graph: per-category runs, then the global run."""
    import dagster as dg

    from distill_assets import quickstart as qs
    from distill_assets.defs.partitions import CATEGORY

    seen = []

    @dg.asset(partitions_def=CATEGORY, group_name="seeds")
    def toy_seeds(context):
        seen.append(("seeds", context.partition_key))

    @dg.asset_check(asset=toy_seeds)
    def toy_seeds_ok():
        return dg.AssetCheckResult(passed=True)

    @dg.asset(deps=[toy_seeds], group_name="training")
    def toy_train():
        seen.append(("train", None))
        return dg.MaterializeResult(metadata={"status": "skipped: needs CUDA"})

    @dg.asset(deps=[toy_train], group_name="evaluation")
    def toy_eval():
        raise RuntimeError("the eval gate failed: transfer 0.41 < 0.85")

    @dg.asset(deps=[toy_seeds], group_name="dataset", partitions_def=CATEGORY)
    def toy_clean():
        return None

    @dg.asset_check(asset=toy_clean, blocking=True)
    def toy_yield():
        return dg.AssetCheckResult(passed=False, description="yield 0.12 outside [0.25, 0.50]")

    defs = dg.Definitions(assets=[toy_seeds, toy_train, toy_eval, toy_clean], asset_checks=[toy_seeds_ok, toy_yield])
    keys = qs.stage_keys(defs)
    part, unpart, other = qs.split_by_partitioning(defs, keys)
    assert [k.to_user_string() for k in part] == ["toy_seeds", "toy_clean"]
    assert [k.to_user_string() for k in unpart] == ["toy_train", "toy_eval"]
    cats = CATEGORY.get_partition_keys()[:2]
    with dg.DagsterInstance.ephemeral() as inst:
        with pytest.raises(qs.StageFailed, match=r"blocking check toy_clean:toy_yield failed: yield 0.12 outside"):
            qs.materialize(part, cats, defs=defs, instance=inst, echo=lambda s: None)
        summaries = qs.materialize(part[:1] + unpart[:1], cats, defs=defs, instance=inst, echo=lambda s: None)
        assert [s.label for s in summaries] == [f"materialize:{c}" for c in cats] + ["materialize:global"]
        assert summaries[-1].skipped == {"toy_train": "skipped: needs CUDA"}
        times = qs.stage_times(defs, summaries)
        assert set(times) == {"seeds", "training"}  # the check step counts with its asset's group
        with pytest.raises(qs.StageFailed, match="toy_eval failed: .*transfer 0.41 < 0.85"):
            qs.materialize(unpart, None, defs=defs, instance=inst, echo=lambda s: None)
    assert seen[:3] == [("seeds", cats[0]), ("seeds", cats[0]), ("seeds", cats[1])]
    assert qs.resolve_selection(defs, "group:training") == [dg.AssetKey("toy_train")]
    with pytest.raises(LookupError, match="unknown asset"):
        qs.resolve_selection(defs, "toy_seeds,nope")


def test_export_dataset(tmp_path):
    from distill_assets.lib.ledger import open_store

    home = tmp_path / "home"
    proc = _distill(["export", "dataset", str(tmp_path / "out"), "--ngrams-only"], home)
    assert proc.returncode == 1 and "materialize it first" in _one_line_error(proc)
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Where is my parcel?"},
            {"role": "assistant", "content": "It left the warehouse this morning."}]
    rows = [{"example_id": f"e{i}", "category": "support", "messages": json.dumps(msgs), "split": "train",
             "seed_id": "s", "method": "response", "difficulty": "easy", "source": "seed", "generation_id": f"e{i}"}
            for i in range(3)]
    import pandas as pd

    open_store(str(home / "distill.duckdb")).insert_df("clean_dataset", pd.DataFrame(rows))
    proc = _distill(["export", "dataset", str(tmp_path / "out"), "--ngrams-only"], home)
    assert proc.returncode == 0, proc.stderr
    assert "support: 3 train, 0 validation" in proc.stdout and "math: no rows" in proc.stdout
    assert (tmp_path / "out" / "README.md").read_text().startswith("---\nlicense: other")
