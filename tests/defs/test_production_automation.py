"""The optional automation of docs/production_loop.md section 6: `follow_upstream_condition()` on a downstream
asset makes it follow its upstream partitions, but only once every upstream blocking check has passed (plain
`eager()` would train on data a failed contamination check stopped)."""

import dagster as dg
import pytest

from distill_assets.defs.partitions import CATEGORY
from distill_assets.defs.production_jobs import follow_upstream_condition

FAILING: set[str] = set()


def _graph(condition: dg.AutomationCondition):
    @dg.asset(name="clean_dataset", partitions_def=CATEGORY)
    def clean_dataset():
        return None

    @dg.asset_check(asset="clean_dataset", name="no_eval_contamination", blocking=True, partitions_def=CATEGORY)
    def contamination(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=context.partition_key not in FAILING, severity=dg.AssetCheckSeverity.ERROR)

    @dg.asset(name="lora_adapter", deps=["clean_dataset"], automation_condition=condition)
    def lora_adapter():
        return None

    return dg.Definitions(assets=[clean_dataset, lora_adapter], asset_checks=[contamination])


def _materialize_partitions(defs, instance, keys, failing=()):
    FAILING.clear()
    FAILING.update(failing)
    try:
        job = defs.resolve_implicit_global_asset_job_def()
        for k in keys:
            res = job.execute_in_process(partition_key=k, instance=instance, raise_on_error=False,
                                         asset_selection=[dg.AssetKey("clean_dataset")])
            assert res.success == (k not in failing)
    finally:
        FAILING.clear()


def _requested(defs, instance, cursor=None):
    r = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    return r.get_num_requested(dg.AssetKey("lora_adapter")), r.cursor


def test_follow_upstream_waits_for_every_blocking_check():
    defs = _graph(follow_upstream_condition())
    instance = dg.DagsterInstance.ephemeral()
    cats = CATEGORY.get_partition_keys()

    n, cursor = _requested(defs, instance)
    assert n == 0  # upstream partitions missing

    # every partition materialized, but code's contamination check failed
    _materialize_partitions(defs, instance, cats, failing={"code"})
    n, cursor = _requested(defs, instance, cursor)
    assert n == 0

    # code is rebuilt and its check passes: now the adapter follows, once
    _materialize_partitions(defs, instance, ["code"])
    n, cursor = _requested(defs, instance, cursor)
    assert n == 1
    n, cursor = _requested(defs, instance, cursor)
    assert n == 0

    # a later backfill of one category whose check fails again does not retrain
    _materialize_partitions(defs, instance, ["math"], failing={"math"})
    n, cursor = _requested(defs, instance, cursor)
    assert n == 0


def test_plain_eager_would_not_wait_for_the_checks():
    """The reason for the extra clause: eager() alone requests training on data whose check failed."""
    defs = _graph(dg.AutomationCondition.eager())
    instance = dg.DagsterInstance.ephemeral()
    _, cursor = _requested(defs, instance)
    _materialize_partitions(defs, instance, CATEGORY.get_partition_keys(), failing={"code"})
    n, _ = _requested(defs, instance, cursor)
    assert n == 1


@pytest.mark.parametrize("label", ["eager_after_blocking_checks"])
def test_condition_is_labelled_for_the_ui(label):
    assert follow_upstream_condition().get_label() == label
