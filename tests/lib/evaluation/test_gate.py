"""The eval gate: the pure decision, the read of one version's summary, and the one write of model_versions."""

import json

import pandas as pd

from distill_assets.lib.evaluation.gate import decide_version, gate_decision, latest_evaluated_version, record_decision
from distill_assets.lib.ledger import open_store


def _summary(win_base, transfers):
    rows = [{"variant": "merged_student", "category": "__all__", "win_rate_vs_base": win_base,
             "win_rate_vs_teacher": 0.6, "transfer_ratio": 0.9, "base_win_ci_low": 0.4}]
    rows += [{"variant": "merged_student", "category": c, "transfer_ratio": t} for c, t in transfers.items()]
    return pd.DataFrame(rows)


def test_gate_needs_beating_base_and_every_transfer_target():
    targets = {"maths": 0.75, "intent": 0.95}
    ok = gate_decision(_summary(0.6, {"maths": 0.8, "intent": 0.96}), targets)
    assert ok["passed"] and ok["reasons"] == []
    tie = gate_decision(_summary(0.5, {"maths": 0.8, "intent": 0.96}), targets)
    assert not tie["passed"] and "not above 50%" in tie["reasons"][0]
    low = gate_decision(_summary(0.7, {"maths": 0.7, "intent": 0.96}), targets)
    assert not low["passed"] and low["failed_categories"] == ["maths"]
    missing = gate_decision(_summary(0.7, {"maths": 0.8}), targets)
    assert missing["failed_categories"] == ["intent"]
    assert not gate_decision(pd.DataFrame(columns=["variant", "category"]), targets)["passed"]


def test_record_decision_replaces_the_versions_row(tmp_path):
    store = open_store(str(tmp_path / "d.duckdb"))
    targets = {"maths": 0.75, "intent": 0.95}
    record_decision(store, "v1", gate_decision(_summary(0.5, {"maths": 0.8, "intent": 0.96}), targets), "WARN", "r1")
    record_decision(store, "v1", gate_decision(_summary(0.6, {"maths": 0.8, "intent": 0.96}), targets), "ERROR", "r2")
    mv = store.query_df("SELECT * FROM model_versions")
    assert len(mv) == 1 and bool(mv.iloc[0]["promoted"]) and mv.iloc[0]["severity"] == "ERROR"
    assert json.loads(mv.iloc[0]["reasons"]) == [] and mv.iloc[0]["eval_run_id"] == "r2"


def test_decide_version_reads_only_that_versions_summary(tmp_path):
    store = open_store(str(tmp_path / "d.duckdb"))
    assert latest_evaluated_version(store) == (None, None)
    rows = []
    for version, win, at in (("v1", 0.9, "2026-01-01"), ("v2", 0.4, "2026-01-02")):
        rows.append({"adapter_version": version, "variant": "merged_student", "category": "__all__",
                     "win_rate_vs_base": win, "transfer_ratio": 0.9, "run_id": f"run-{version}",
                     "created_at": pd.Timestamp(at, tz="UTC")})
    store.insert_df("eval_summary", pd.DataFrame(rows))
    assert latest_evaluated_version(store) == ("v2", "run-v2")
    assert decide_version(store, "v1", {})["passed"] and not decide_version(store, "v2", {})["passed"]
    assert store.query_df("SELECT count(*) AS n FROM model_versions").iloc[0]["n"] == 0  # reading writes nothing


def test_a_judge_without_signal_is_skipped_not_failed():
    targets = {"maths": 0.75, "intent": 0.95}
    s = _summary(float("nan"), {"maths": 0.8, "intent": 0.96})
    s["base_judge_signal"] = ["no signal (consistency 0%)", None, None]
    d = gate_decision(s, targets)
    assert d["passed"] and d["reasons"] == [] and d["win_rate_vs_base"] is None
    assert d["notes"] == ["win rate vs base unavailable, criterion skipped: judge has no signal here (consistency 0%)"]
    assert d["judge_vs_base"] == "judge has no signal here (consistency 0%)"
    # even a stored rate next to a no-signal label is not used
    s.loc[0, "win_rate_vs_base"] = 0.2
    assert gate_decision(s, targets)["passed"]
    # the transfer targets still decide
    s.loc[1, "transfer_ratio"] = 0.5
    assert gate_decision(s, targets)["failed_categories"] == ["maths"]
    # no valid verdicts at all is still a failure: the student was not shown to beat the base
    s2 = _summary(float("nan"), {"maths": 0.8, "intent": 0.96}).assign(base_judge_signal="no valid verdicts")
    assert not gate_decision(s2, targets)["passed"]


def test_gate_reports_the_paired_change_per_category():
    s = _summary(0.6, {"maths": 0.8, "intent": 0.96})
    s["delta_vs_base"], s["delta_ci_low"], s["delta_ci_high"] = [None, 0.3, 0.0], [None, 0.1, -0.1], [None, 0.5, 0.1]
    s["change"] = [None, "improved", "no measurable change"]
    per_cat = gate_decision(s, {"maths": 0.75, "intent": 0.95})["per_category"]
    assert per_cat["maths"]["change"] == "improved" and per_cat["maths"]["delta_ci_low"] == 0.1
    assert per_cat["intent"]["change"] == "no measurable change"


def test_no_signal_judge_falls_back_to_the_paired_change():
    import pandas as pd

    from distill_assets.lib.evaluation.gate import gate_decision
    from distill_assets.lib.evaluation.metrics import MERGED, OVERALL

    rows = [{"variant": MERGED, "category": OVERALL, "win_rate_vs_base": float("nan"),
             "base_judge_signal": "no signal (consistency 0%)", "transfer_ratio": 1.0},
            {"variant": MERGED, "category": "classify", "transfer_ratio": 1.0, "delta_vs_base": -0.3,
             "delta_ci_low": -0.45, "delta_ci_high": -0.15, "change": "regressed"},
            {"variant": MERGED, "category": "support", "transfer_ratio": 1.0, "delta_vs_base": 0.0,
             "delta_ci_low": -0.1, "delta_ci_high": 0.1, "change": "no measurable change"}]
    d = gate_decision(pd.DataFrame(rows), {"classify": 0.5, "support": 0.5})
    assert not d["passed"] and d["failed_categories"] == ["classify"]
    assert any("worse than the base" in r for r in d["reasons"])
    assert any("criterion skipped" in n for n in d["notes"])
