import dagster as dg
import pandas as pd

from checks.clean_dataset import yield_check_result
from distill_assets.lib import ledger
from distill_assets.lib.ledger import open_store
from distill_assets.lib.stages import funnel
from distill_assets.lib.yields import evaluate_yield
from tests.checks.helpers import category, clean_frame


def _funnel(losses: dict[str, float], n: int = 100) -> pd.DataFrame:
    rows = []
    for stage, loss in losses.items():
        kept = round(n * (1 - loss))
        rows.append({"category": "support", "stage": stage, "rows_in": n, "kept": kept, "dropped": n - kept,
                     "quarantined": 0, "loss": 1 - kept / n})
        n = kept
    return pd.DataFrame(rows)


GOOD = {"quality_filtered": 0.15, "deduplicated": 0.3, "judged": 0.25, "verified": 0.2}


def test_in_band_yield_and_losses_pass():
    clean = clean_frame(n=20)
    rep = evaluate_yield(60, clean, _funnel(GOOD), category())  # 33%
    r = yield_check_result(rep, category())
    assert r.passed, r.description
    assert "quality_filtered" in r.metadata["funnel"].value and r.metadata["yield"].value == round(20 / 60, 4)


def test_collapsed_yield_is_an_error():
    rep = evaluate_yield(1000, clean_frame(n=10), _funnel(GOOD), category())  # 1% < floor 2%
    r = yield_check_result(rep, category())
    assert not r.passed and r.severity == dg.AssetCheckSeverity.ERROR
    assert any("below the floor" in i["message"] for i in r.metadata["issues"].value)


def test_outside_band_is_a_warning():
    rep = evaluate_yield(40, clean_frame(n=30), _funnel(GOOD), category())  # 75%
    r = yield_check_result(rep, category())
    assert not r.passed and r.severity == dg.AssetCheckSeverity.WARN


def test_stage_loss_outside_band_is_a_warning():
    losses = dict(GOOD, deduplicated=0.7)
    r = yield_check_result(evaluate_yield(60, clean_frame(n=20), _funnel(losses), category()), category())
    assert not r.passed and r.severity == dg.AssetCheckSeverity.WARN
    statuses = {s["stage"]: s["status"] for s in r.metadata["funnel_json"].value}
    assert statuses["deduplicated"] == "outside band" and statuses["judged"] == "ok"


def test_too_few_train_examples_is_an_error():
    c = category().model_copy(update={"min_train_examples": 50})
    r = yield_check_result(evaluate_yield(60, clean_frame(n=20), _funnel(GOOD), c), c)
    assert not r.passed and r.severity == dg.AssetCheckSeverity.ERROR


def test_no_raw_rows_is_an_error():
    r = yield_check_result(evaluate_yield(0, clean_frame(n=0).iloc[0:0], _funnel(GOOD), category()), category())
    assert not r.passed and r.severity == dg.AssetCheckSeverity.ERROR


def test_funnel_from_the_lineage_table(tmp_path):
    store = open_store(str(tmp_path / "d.duckdb"))
    for stage, n_in, n_kept in [("quality_filtered", 100, 85), ("deduplicated", 85, 60), ("judged", 60, 45),
                                ("verified", 45, 36)]:
        ledger.record_lineage(store, pd.DataFrame({"example_id": [f"x{i}" for i in range(n_in)],
                                           "verdict": ["kept"] * n_kept + ["dropped"] * (n_in - n_kept),
                                           "reason": "r", "evidence": "{}"}), stage, "support", "run")
    rep = evaluate_yield(100, clean_frame(n=30), funnel(store, "support"), category())
    assert rep.passed, rep.issues
    ledger.record_lineage(store, pd.DataFrame({"example_id": [f"x{i}" for i in range(60)],
                                       "verdict": ["kept"] * 10 + ["dropped"] * 50, "reason": "r", "evidence": "{}"}),
                         "judged", "support", "run")
    rep = evaluate_yield(100, clean_frame(n=30), funnel(store, "support"), category())
    assert [m for lvl, m in rep.issues if "judged" in m]
