"""production_train_sensor (run-status sensor on production_retrain_job) evaluated tick by tick with
`build_sensor_context` against a real instance holding real runs of the retrain job: it waits while a category
run of the wave is unfinished or failed (a blocking ERROR check fails the run), fires once the whole wave has
succeeded (re-executions count), asks for the same run_key whenever it is evaluated again, and its cursor moves
past each run-status event."""

import dagster as dg
import pytest

from distill_assets.defs import production_jobs as jobs
from distill_assets.defs.partitions import CATEGORY
from distill_assets.defs.production_jobs import TAG_BATCH, TAG_WAVE, TAG_WAVE_SIZE
from distill_assets.defs.production_sensors import build_production_failure_sensor, production_train_sensor
from distill_assets.lib.production import intake
from tests.defs.production_standins import standins

FAILING = set()  # partitions whose blocking check fails on the next run


def _graph():
    """Stand-ins with the real keys (the real assets need a teacher), and one blocking ERROR check."""
    out = standins()

    @dg.asset_check(asset="decontaminated", name="no_eval_contamination", blocking=True,
                    partitions_def=CATEGORY)
    def contamination(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=context.partition_key not in FAILING,
                                   severity=dg.AssetCheckSeverity.ERROR)

    return out, [contamination]


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:  # sqlite storage, as under `dagster dev`
        yield inst


@pytest.fixture
def wave(store, tmp_path):
    """One failure-sensor tick that fires math and code: two batches, one wave."""
    for cat in ("math", "code"):
        intake.add_failures(store, [{"category": cat, "input": f"{cat} failure {i}", "bad_output": "x"}
                                    for i in range(8)])
    s = build_production_failure_sensor(min_failures=3, drop_folder=str(tmp_path / "none"))
    res = s(dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(), resources={"store": store}))
    reqs = {r.partition_key: r for r in res.run_requests}
    assert sorted(reqs) == ["code", "math"]
    assert {r.tags[TAG_WAVE_SIZE] for r in reqs.values()} == {"2"}
    return reqs


def _tick(instance, cursor):
    data = production_train_sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor))
    return data


def _record_id(cursor: str) -> int:
    from dagster._core.definitions.run_status_sensor_definition import RunStatusSensorCursor

    return RunStatusSensorCursor.from_json(cursor).record_id


def test_train_sensor_waits_for_the_whole_wave_then_fires_once(instance, wave, store):
    assets, checks = _graph()
    defs = dg.Definitions(assets=assets, asset_checks=checks, jobs=jobs.jobs)
    job = defs.resolve_job_def("production_retrain_job")

    def run(cat, **extra_tags):
        rr = wave[cat]
        return job.execute_in_process(partition_key=rr.partition_key, tags={**rr.tags, **extra_tags},
                                      instance=instance, raise_on_error=False)

    # the sensor is switched on before any run: the first tick only sets its cursor
    t0 = _tick(instance, None)
    assert not t0.run_requests and t0.skip_message.startswith("Initiating production_train_sensor")

    # math succeeds; code is still running
    assert run("math").success
    from dagster._core.test_utils import create_run_for_test

    create_run_for_test(instance, job_name="production_retrain_job", status=dg.DagsterRunStatus.STARTED,
                        tags=dict(wave["code"].tags))
    t1 = _tick(instance, t0.cursor)
    assert not t1.run_requests
    assert t1.skip_message == f"wave {wave['math'].tags[TAG_WAVE]}: waiting for its other category runs"
    assert _record_id(t1.cursor) > _record_id(t0.cursor)

    # nothing new: nothing to do, the cursor stays
    t2 = _tick(instance, t1.cursor)
    assert not t2.run_requests and t2.cursor == t1.cursor

    # code's blocking contamination check fails: the run fails and clean_dataset is not built
    FAILING.add("code")
    try:
        failed = run("code")
    finally:
        FAILING.discard("code")
    assert not failed.success
    assert failed.dagster_run.status == dg.DagsterRunStatus.FAILURE
    built = {e.asset_key.to_user_string() for e in failed.get_asset_materialization_events()}
    assert "decontaminated" in built and "clean_dataset" not in built
    t3 = _tick(instance, t2.cursor)
    assert not t3.run_requests  # a failed run is no SUCCESS event, and the wave is incomplete

    # the failed run is re-executed (same tags) and succeeds: the wave is complete, training starts
    rerun = run("code", **{"dagster/parent_run_id": failed.run_id, "dagster/root_run_id": failed.run_id})
    assert rerun.success
    t4 = _tick(instance, t3.cursor)
    wave_id = wave["code"].tags[TAG_WAVE]
    assert len(t4.run_requests) == 1
    rr = t4.run_requests[0]
    assert rr.run_key == f"train-{wave_id}" and rr.tags[TAG_WAVE] == wave_id
    assert set(rr.asset_selection) == {dg.AssetKey(k) for k in jobs.TRAIN_ASSETS}
    assert rr.partition_key is None  # one unpartitioned training run over every category
    assert _record_id(t4.cursor) > _record_id(t3.cursor)

    # the cursor write was lost: re-evaluating from the old cursor asks for the same run_key (Dagster drops it)
    again = _tick(instance, t3.cursor)
    assert [r.run_key for r in again.run_requests] == [rr.run_key] and again.cursor == t4.cursor
    # with the saved cursor the wave is not requested again
    t5 = _tick(instance, t4.cursor)
    assert not t5.run_requests and t5.cursor == t4.cursor

    # one more success of the wave (math re-executed by hand): still the same run_key, so still one run
    assert run("math").success
    t6 = _tick(instance, t5.cursor)
    assert [r.run_key for r in t6.run_requests] == [rr.run_key]

    # a manual backfill run of the same job (no wave tag) never starts training on its own
    assert job.execute_in_process(partition_key="support", instance=instance).success
    t7 = _tick(instance, t6.cursor)
    assert not t7.run_requests and t7.skip_message.startswith("not a production-failure run")
    assert _record_id(t7.cursor) > _record_id(t6.cursor)

    # every batch of the wave is recorded, each with its own successful run
    runs = instance.get_runs(filters=dg.RunsFilter(tags={TAG_WAVE: wave_id},
                                                   statuses=[dg.DagsterRunStatus.SUCCESS]))
    assert {r.tags[TAG_BATCH] for r in runs} == {wave["math"].run_key, wave["code"].run_key}


def test_runs_finished_between_ticks_give_one_run_key_and_skip_an_existing_base_model(instance, wave):
    assets, checks = _graph()
    job = dg.Definitions(assets=assets, asset_checks=checks, jobs=jobs.jobs).resolve_job_def(
        "production_retrain_job")
    t0 = _tick(instance, None)
    instance.report_runless_asset_event(dg.AssetMaterialization(jobs.BASE_ASSET))
    for cat in ("math", "code"):
        rr = wave[cat]
        assert job.execute_in_process(partition_key=cat, tags=rr.tags, instance=instance).success
    # both runs finished before the tick: the first event already sees a complete wave, the second one asks
    # again with the same run_key (one run)
    key = f"train-{wave['math'].tags[TAG_WAVE]}"
    t1 = _tick(instance, t0.cursor)
    t2 = _tick(instance, t1.cursor)
    assert [r.run_key for r in t1.run_requests] == [key] and [r.run_key for r in t2.run_requests] == [key]
    assert set(t1.run_requests[0].asset_selection) == {dg.AssetKey(k) for k in jobs.TRAIN_ASSETS
                                                      if k != jobs.BASE_ASSET}
    assert _record_id(t2.cursor) > _record_id(t1.cursor) > _record_id(t0.cursor)
    assert not _tick(instance, t2.cursor).run_requests
