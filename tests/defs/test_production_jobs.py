"""The retraining jobs resolve against the graph's keys: one partitioned by category, one unpartitioned."""

import dagster as dg

from distill_assets.defs import failure_resolution
from distill_assets.defs import production_jobs as jobs
from distill_assets.defs import production_sensors as sensor
from distill_assets.defs.partitions import CATEGORY
from tests.defs.production_standins import standins


def _standins():
    return standins([a for a in jobs.TRAIN_ASSETS if a != "failure_resolution"])


def test_jobs_select_exactly_their_assets(store):
    defs = dg.Definitions(assets=[*_standins(), *failure_resolution.assets], jobs=jobs.jobs, sensors=sensor.sensors,
                          resources={"store": store})
    retrain = defs.resolve_job_def("production_retrain_job")
    train = defs.resolve_job_def("production_train_job")
    assert {k.to_user_string() for k in retrain.asset_layer.selected_asset_keys} == set(jobs.CATEGORY_ASSETS)
    assert retrain.partitions_def == CATEGORY
    assert {k.to_user_string() for k in train.asset_layer.selected_asset_keys} == set(jobs.TRAIN_ASSETS)
    assert train.partitions_def is None
    s = defs.resolve_sensor_def(sensor.SENSOR_NAME)
    assert s.job_name == "production_retrain_job"


def test_train_request_skips_an_existing_base_model():
    inst = dg.DagsterInstance.ephemeral()
    rr = jobs.train_run_request(inst, "w-1")
    assert dg.AssetKey(jobs.BASE_ASSET) in rr.asset_selection and rr.run_key == "train-w-1"
    inst.report_runless_asset_event(dg.AssetMaterialization(jobs.BASE_ASSET))
    rr = jobs.train_run_request(inst, "w-1")
    assert dg.AssetKey(jobs.BASE_ASSET) not in rr.asset_selection


def test_follow_upstream_condition_builds():
    cond = jobs.follow_upstream_condition()
    assert "blocking" in cond.get_label()
