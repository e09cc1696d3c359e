"""production_failure_sensor with build_sensor_context: thresholds, partitions, run_key dedup, cursor."""

import json
from datetime import timedelta

import dagster as dg
import pytest

from distill_assets.defs.production_sensors import build_production_failure_sensor, wave_complete
from distill_assets.lib.production import intake, split, state
from distill_assets.lib.production.batches import parse_cursor
from resources.clock import utcnow


def _pending(store, cat, n, start=0, now=None):
    """Add failures until `n` of them are pending (some land in held_out by the hash split)."""
    added, i = [], start
    while len(added) < n:
        rec = {"category": cat, "input": f"{cat} failure number {i}", "bad_output": "wrong"}
        fid = intake.failure_id(cat, rec["input"], rec["bad_output"])
        intake.add_failures(store, [rec], now=now)
        if not split.is_held_out(split.split_key(cat, rec["input"]), 0.2):
            added.append(fid)
        i += 1
    return added, i


def _eval(sensor, store, cursor=None):
    ctx = dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(), cursor=cursor,
                                  resources={"store": store})
    return sensor(ctx)


@pytest.fixture
def sensor(tmp_path):
    return build_production_failure_sensor(min_failures=3, max_wait_s=3600, drop_folder=str(tmp_path / "none"))


def test_below_threshold_no_run(store, sensor):
    _pending(store, "math", 2)
    res = _eval(sensor, store)
    assert not res.run_requests
    assert "2/3 pending" in res.skip_reason.skip_message


def test_at_threshold_one_run_for_only_that_partition(store, sensor):
    _pending(store, "math", 3)
    _pending(store, "code", 1)
    res = _eval(sensor, store)
    assert len(res.run_requests) == 1
    rr = res.run_requests[0]
    assert rr.partition_key == "math"
    assert rr.run_key.startswith("math-") and rr.tags["distill/failure_batch"] == rr.run_key
    batch = state.list_failures(store, category="math")
    assert (batch["batch_key"] == rr.run_key).all()  # the held-out ones ride along into eval_set
    assert state.list_failures(store, category="code")["batch_key"].isna().all()


def test_two_categories_two_runs_one_wave(store, sensor):
    _pending(store, "math", 3)
    _pending(store, "support", 4)
    res = _eval(sensor, store)
    assert sorted(r.partition_key for r in res.run_requests) == ["math", "support"]
    assert len({r.tags["distill/failure_wave"] for r in res.run_requests}) == 1
    assert {r.tags["distill/failure_wave_size"] for r in res.run_requests} == {"2"}


def test_reevaluation_same_run_key_and_cursor_advances(store, sensor):
    _, nxt = _pending(store, "math", 3)
    first = _eval(sensor, store)
    key = first.run_requests[0].run_key
    seq_before = int(state.list_failures(store, category="math")["ingest_seq"].max())
    # the tick's cursor write was lost: evaluate again from the old cursor, with a new failure arriving
    _pending(store, "math", 1, start=nxt)
    again = _eval(sensor, store, cursor=None)
    assert [r.run_key for r in again.run_requests] == [key]  # Dagster drops a repeated run_key
    assert again.cursor == first.cursor
    # with the saved cursor the same batch is never requested again
    after = _eval(sensor, store, cursor=first.cursor)
    assert not after.run_requests
    c0, c1 = parse_cursor(first.cursor), parse_cursor(after.cursor)
    assert c0["math"] == seq_before
    assert c1 == c0
    # the next batch gets a new key and moves the cursor on
    _pending(store, "math", 2, start=nxt + 50)
    nxt_batch = _eval(sensor, store, cursor=after.cursor)
    assert len(nxt_batch.run_requests) == 1 and nxt_batch.run_requests[0].run_key != key
    assert parse_cursor(nxt_batch.cursor)["math"] > c0["math"]


def test_max_wait_fires_below_threshold(store, sensor):
    old = utcnow() - timedelta(hours=2)
    _pending(store, "classify", 1, now=old)
    res = _eval(sensor, store)
    assert [r.partition_key for r in res.run_requests] == ["classify"]
    assert res.run_requests[0].tags["distill/trigger"] == "max_wait"


def test_defaults_come_from_the_task_file(store, tmp_path):
    s = build_production_failure_sensor(drop_folder=str(tmp_path / "none"))
    from distill_assets.lib.tasks import load_tasks

    n = load_tasks().category("math").retrain_min_failures
    _pending(store, "math", n - 1)
    assert not _eval(s, store).run_requests
    _pending(store, "math", 1, start=1000)
    assert len(_eval(s, store).run_requests) == 1


def test_sensor_ingests_the_drop_folder(store, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    lines = [json.dumps({"category": "code", "input": f"write f{i}", "bad_output": "pass"}) for i in range(10)]
    (inbox / "batch.jsonl").write_text("\n".join(lines) + "\n")
    s = build_production_failure_sensor(min_failures=3, drop_folder=str(inbox))
    res = _eval(s, store)
    assert [r.partition_key for r in res.run_requests] == ["code"]
    assert (inbox / "processed" / "batch.jsonl").exists() and not (inbox / "batch.jsonl").exists()


def test_wave_complete_counts_successful_batches():
    from dagster._core.test_utils import create_run_for_test

    inst = dg.DagsterInstance.ephemeral()
    for b, status in (("a", dg.DagsterRunStatus.SUCCESS), ("b", dg.DagsterRunStatus.FAILURE)):
        create_run_for_test(inst, job_name="production_retrain_job", status=status,
                            tags={"distill/failure_wave": "w1", "distill/failure_batch": b})
    assert not wave_complete(inst, "w1", 2)
    create_run_for_test(inst, job_name="production_retrain_job", status=dg.DagsterRunStatus.SUCCESS,
                        tags={"distill/failure_wave": "w1", "distill/failure_batch": "b"})  # re-execution
    assert wave_complete(inst, "w1", 2)
