"""The blocking `awq_parity` check on a stand-in `awq_export` that registers the real tiny AWQ folder: it passes,
it blocks downstream when the folder changed since export, and a skipped export is a WARN that blocks nothing."""

import json

import dagster as dg
import pytest

from checks.awq_export import build_awq_export_checks
from distill_assets.lib import ledger
from distill_assets.lib.artifacts import dir_digest
from resources.store import DuckDBStore
from tests.lib.training.tiny_model import TINY_AWQ_BAR, session_dirs, tiny_awq

pytest.importorskip("llmcompressor", reason="the awq extra is not installed")


def _graph(base, awq_dir, *, sha: str | None = None, skipped: str | None = None):
    @dg.asset(name="awq_export")
    def standin(context: dg.AssetExecutionContext, store: DuckDBStore) -> dg.MaterializeResult:
        if skipped:
            return dg.MaterializeResult(metadata={"status": skipped})
        ledger.register_artifact(store, artifact_id="merged_model:m1", asset="merged_model", kind="hf_model",
                                 path=str(base), sha256=dir_digest(base)[0], bytes=1, parent_artifact_id=None,
                                 dataset_version="v1", run_id=context.run.run_id, metadata={})
        real, size = dir_digest(awq_dir)
        ledger.register_artifact(store, artifact_id="awq_export:w1", asset="awq_export", kind="awq_w4a16",
                                 path=str(awq_dir), sha256=sha or real, bytes=size,
                                 parent_artifact_id="merged_model:m1", dataset_version="v1",
                                 run_id=context.run.run_id, metadata={})
        return dg.MaterializeResult(metadata={"status": "ok", "artifact_id": "awq_export:w1"})

    @dg.asset(deps=[standin])
    def downstream() -> None:
        return None

    return [standin, downstream, *build_awq_export_checks(standin.key)]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return session_dirs(tmp_path_factory)["base"], tiny_awq(tmp_path_factory)


@pytest.mark.parametrize("case", ["ok", "changed", "skipped"])
def test_awq_parity(store, dirs, monkeypatch, case):
    monkeypatch.setenv("DISTILL_AWQ_PARITY_THRESHOLDS", json.dumps({"w4a16": TINY_AWQ_BAR}))  # random-init model
    base, awq_dir = dirs
    defs = _graph(base, awq_dir, sha="0" * 64 if case == "changed" else None,
                  skipped="skipped: needs the awq extra" if case == "skipped" else None)
    res = dg.materialize(defs, resources={"store": store}, raise_on_error=False)
    (ev,) = res.get_asset_check_evaluations()
    ran = {m.materialization.asset_key.path[-1] for m in res.get_asset_materialization_events()}
    if case == "ok":
        assert ev.passed and "| w4a16 | True |" in ev.metadata["parity"].value and "downstream" in ran
        assert ev.metadata["merged"].value == "merged_model:m1"
    elif case == "changed":
        assert not ev.passed and ev.severity == dg.AssetCheckSeverity.ERROR
        assert "sha256 mismatch" in ev.metadata["parity"].value and "downstream" not in ran  # blocking
    else:
        assert not ev.passed and ev.severity == dg.AssetCheckSeverity.WARN and "downstream" in ran
