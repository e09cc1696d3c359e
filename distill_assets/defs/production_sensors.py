"""The production sensors: ingest the drop folder and request targeted retrains; train once a wave is done.

What fires and why is decided by `lib.production.batches.plan_batches`; this module only turns its plan into
run requests (one per batch, run_key = batch key) and starts the training job once every run of a wave
succeeded.
"""

import json
from collections.abc import Callable
from datetime import datetime

import dagster as dg

from distill_assets.defs.production_jobs import (
    TAG_BATCH,
    TAG_CATEGORY,
    TAG_TRIGGER,
    TAG_WAVE,
    TAG_WAVE_SIZE,
    production_retrain_job,
    production_train_job,
    train_run_request,
)
from distill_assets.lib.production.batches import Batch, parse_cursor, plan_batches
from distill_assets.lib.production.intake import ingest_drop_folder
from distill_assets.lib.settings import production_settings
from distill_assets.lib.tasks import load_tasks
from resources.clock import utcnow
from resources.store import DuckDBStore

SENSOR_NAME = "production_failure_sensor"


def run_request(b: Batch) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=b.batch_key,
        partition_key=b.category,
        tags={TAG_BATCH: b.batch_key, TAG_CATEGORY: b.category, TAG_WAVE: b.wave,
              TAG_WAVE_SIZE: str(b.wave_size), TAG_TRIGGER: b.reason},
    )


def build_production_failure_sensor(
    name: str = SENSOR_NAME,
    *,
    min_failures: int | None = None,
    max_wait_s: float | None = None,
    drop_folder: str | None = None,
    clock: Callable[[], datetime] = utcnow,
    minimum_interval_seconds: int | None = None,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
) -> dg.SensorDefinition:
    """The sensor, with optional overrides of the task file's thresholds (tests, or one global policy)."""

    @dg.sensor(
        name=name,
        job=production_retrain_job,
        minimum_interval_seconds=minimum_interval_seconds or production_settings().sensor_interval_s,
        default_status=default_status,
        description="Ingests the failure drop folder and requests a retrain of only the categories whose "
                    "failures reached the threshold or waited too long. One run per failure batch.",
    )
    def _sensor(context: dg.SensorEvaluationContext, store: DuckDBStore) -> dg.SensorResult:
        tasks = load_tasks()
        folder = drop_folder or str(production_settings().failures_dir)
        for r in ingest_drop_folder(store, folder, tasks=tasks):
            context.log.info(f"ingested {r.source}: {r.inserted} new, {r.duplicates} duplicate, "
                             f"{r.rejected} rejected")
        plan = plan_batches(store, parse_cursor(context.cursor), clock(), tasks, min_failures, max_wait_s)
        cursor = json.dumps(plan.cursor, sort_keys=True)
        if not plan.batches:
            detail = "; ".join(f"{k}: {v}" for k, v in plan.waiting.items()) or "no categories"
            return dg.SensorResult(skip_reason=dg.SkipReason(f"no batch ready ({detail})"), cursor=cursor)
        return dg.SensorResult(run_requests=[run_request(b) for b in plan.batches], cursor=cursor)

    return _sensor


production_failure_sensor = build_production_failure_sensor()


def wave_complete(instance: dg.DagsterInstance, wave: str, size: int) -> bool:
    """True once every batch of the wave has a successful retrain run (re-executions count)."""
    runs = instance.get_runs(filters=dg.RunsFilter(tags={TAG_WAVE: wave}, statuses=[dg.DagsterRunStatus.SUCCESS]))
    done = {r.tags.get(TAG_BATCH) for r in runs if r.job_name == production_retrain_job.name}
    return len(done - {None}) >= size


@dg.run_status_sensor(
    name="production_train_sensor",
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[production_retrain_job],
    request_job=production_train_job,
    description="After every category run of a failure wave succeeded, retrain the adapter and evaluate it "
                "(one run per wave).",
)
def production_train_sensor(context: dg.RunStatusSensorContext):
    tags = context.dagster_run.tags
    wave = tags.get(TAG_WAVE)
    if not wave:
        return dg.SkipReason("not a production-failure run (a manual backfill); training is not automatic")
    if not wave_complete(context.instance, wave, int(tags.get(TAG_WAVE_SIZE) or 1)):
        return dg.SkipReason(f"wave {wave}: waiting for its other category runs")
    return train_run_request(context.instance, wave)


sensors = [production_failure_sensor, production_train_sensor]
