"""The `eval_gate` check on a stand-in `eval_report`: it reports the gate decision and its severity, and never
writes model_versions (failure_resolution does)."""

import dagster as dg
import pandas as pd
import pytest

from checks.eval_report import build_eval_report_checks
from distill_assets.lib.tasks import load_tasks
from resources.store import DuckDBStore


def _standin(win_rate_vs_base: float | None, version: str = "adapter-1", base_judge_signal: str = "ok"):
    @dg.asset(name="eval_report")
    def eval_report(context: dg.AssetExecutionContext, store: DuckDBStore) -> dg.MaterializeResult:
        targets = {c.name: c.eval_target_transfer for c in load_tasks().categories}
        rows = [{"adapter_version": version, "variant": "merged_student", "category": "__all__",
                 "win_rate_vs_base": win_rate_vs_base, "base_judge_signal": base_judge_signal,
                 "transfer_ratio": 1.0, "run_id": context.run.run_id,
                 "created_at": pd.Timestamp.now(tz="UTC")}]
        rows += [{"adapter_version": version, "variant": "merged_student", "category": c, "transfer_ratio": t,
                  "run_id": context.run.run_id, "created_at": pd.Timestamp.now(tz="UTC")} for c, t in targets.items()]
        store.insert_df("eval_summary", pd.DataFrame(rows))
        return dg.MaterializeResult(metadata={"adapter_version": version})

    return eval_report


@pytest.mark.parametrize("win, severity, passed", [(0.8, "WARN", True), (0.5, "ERROR", False)])
def test_eval_gate_reports_without_writing(store, win, severity, passed):
    standin = _standin(win)
    checks = build_eval_report_checks(standin.key)
    cfg = {"ops": {"eval_report_eval_gate": {"config": {"severity": severity}}}}
    res = dg.materialize([standin, *checks], resources={"store": store}, run_config=cfg, raise_on_error=False)
    ev = res.get_asset_check_evaluations()[0]
    assert ev.asset_check_key.name == "eval_gate" and ev.passed is passed
    assert ev.severity == getattr(dg.AssetCheckSeverity, severity)
    assert ev.metadata["adapter_version"].value == "adapter-1" and ev.metadata["promoted"].value is passed
    assert store.query_df("SELECT * FROM model_versions").empty  # the check only reads


def test_eval_gate_says_a_judge_without_signal_was_not_used(store):
    standin = _standin(None, base_judge_signal="no signal (consistency 0%)")
    checks = build_eval_report_checks(standin.key)
    res = dg.materialize([standin, *checks], resources={"store": store}, raise_on_error=False)
    ev = res.get_asset_check_evaluations()[0]
    assert ev.passed  # the transfer targets are met; the blind judge fails nothing
    assert ev.metadata["win_rate_vs_base"].value == "judge has no signal here (consistency 0%)"
    assert ev.metadata["judge_vs_base"].value == "judge has no signal here (consistency 0%)"
    assert "criterion skipped" in ev.metadata["notes"].value
