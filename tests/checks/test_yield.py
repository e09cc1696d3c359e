import dagster as dg
import pandas as pd

from checks.clean_dataset import yield_check_result
from distill_assets.lib import ledger
from distill_assets.lib.ledger import open_store
from distill_assets.lib.stages import funnel
from distill_assets.lib.yields import evaluate_yield
from resources.store import DuckDBStore
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


def test_a_stage_without_verdicts_says_why_from_what_was_written():
    losses = {"quality_filtered": 0.15, "deduplicated": 0.3}  # judged and verified: no verdicts
    written = {"quality_filtered": 100, "deduplicated": 85, "judged": 0}
    rep = evaluate_yield(60, clean_frame(n=20), _funnel(losses), category(), written=written)
    statuses = {s["stage"]: s["status"] for s in rep.stages.to_dict("records")}
    assert statuses == {"quality_filtered": "ok", "deduplicated": "ok", "judged": "no rows",
                        "verified": "not materialized"}
    assert [m for _, m in rep.issues] == ["verified: never materialized for this category, its loss cannot "
                                          "be checked"]
    rep = evaluate_yield(60, clean_frame(n=20), _funnel({"deduplicated": 0.3}), category(),
                         written={"quality_filtered": 100, "deduplicated": 85, "judged": 60, "verified": 45})
    assert any(m.startswith("quality_filtered: 100 row(s) written without lineage verdicts") for _, m in rep.issues)


def test_the_yield_check_reads_the_verdicts_the_io_manager_wrote(duck_resources, store):
    from distill_assets.defs.partitions import CATEGORY
    from distill_assets.defs.stage_output import publish_stage
    from distill_assets.lib.stages import annotate, kept, written_rows

    @dg.asset(name="raw_generations", partitions_def=CATEGORY, metadata={"partition_expr": "category"})
    def raw(context) -> pd.DataFrame:
        return pd.DataFrame({"example_id": [f"x{i}" for i in range(20)], "category": context.partition_key})

    @dg.asset(name="quality_filtered", ins={"raw": dg.AssetIn("raw_generations")}, partitions_def=CATEGORY,
              metadata={"partition_expr": "category"})
    def quality(context: dg.AssetExecutionContext, store: DuckDBStore, raw: pd.DataFrame):
        rows = kept(raw)
        out = annotate(rows, [i < 17 for i in range(len(rows))], [""] * len(rows),
                       [{}] * len(rows))
        return publish_stage(context, store, out, stage="quality_filtered")

    assert dg.materialize([raw, quality], partition_key="support", resources=duck_resources).success
    rep = evaluate_yield(20, clean_frame(n=6), funnel(store, "support"), category(),
                         written=written_rows(store, "support"))
    row = next(s for s in rep.stages.to_dict("records") if s["stage"] == "quality_filtered")
    assert (row["rows_in"], row["kept"], row["status"]) == (20, 17, "ok")  # 15% loss, in band
    assert written_rows(store, "support") == {"raw_generations": 20, "quality_filtered": 20}
