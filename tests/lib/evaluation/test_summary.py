"""eval_summary, the markdown and the HTML report from small fixed results: the change vs base leads, and a
judge without signal shows no win rate anywhere."""

import math
import re
from types import SimpleNamespace

import duckdb
import numpy as np
import pandas as pd
import pytest

from distill_assets.lib import ledger
from distill_assets.lib.evaluation import pairwise as pw
from distill_assets.lib.evaluation import report as rp
from distill_assets.lib.evaluation.metrics import stratified_breakdown
from distill_assets.lib.evaluation.report_html import render_html
from distill_assets.lib.evaluation.summary import SUMMARY_COLUMNS, judge_signals, summary_table

N = 12  # items per category


def _cat(name, target, complexity):
    return SimpleNamespace(name=name, eval_target_transfer=target, complexity=complexity)


CATS = {"classify": _cat("classify", 0.9, "simple"), "maths": _cat("maths", 0.75, "complex")}


def _scored():
    """classify: base right on 2/12, merged on 11/12 (improved); maths: both right on the same 8/12."""
    rows = []
    for cat in CATS:
        for i in range(N):
            base = float(i < 2) if cat == "classify" else float(i % 3 != 0)
            merged = float(i < 11) if cat == "classify" else base
            for variant, score in (("teacher", 1.0), ("base_student", base), ("merged_student", merged)):
                rows.append({"example_id": f"{cat}{i}", "variant": variant, "category": cat,
                             "difficulty": "easy" if i % 2 else "hard", "source": "eval", "length_bucket": "<64",
                             "prompt": f"{cat} question {i}", "response": f"{variant.upper()} answer {i}",
                             "metric": "accuracy" if cat == "classify" else "exact_match", "score": score,
                             "task_status": "pass" if score else "fail", "task_detail": "{}", "rouge_l": score,
                             "response_tokens": 10, "finish_reason": "stop", "latency_s": 0.1,
                             "generation_error": None})
    return pd.DataFrame(rows)


def _complete(fn):
    return lambda reqs, category: [SimpleNamespace(status="ok", content=fn(r.messages[0]["content"])) for r in reqs]


def _position_biased(prompt):
    return "Winner: A"


def _prefers_teacher_then_merged(prompt):
    a = prompt.split("Response A:")[1].split("Response B:")[0]
    b = prompt.split("Response B:")[1]
    for who in ("TEACHER", "MERGED"):
        if who in a or who in b:
            return "Winner: A" if who in a else "Winner: B"
    return "Winner: tie"


def _results(judge):
    scored = _scored()
    pairs = pd.concat([pw.make_pairs(scored, "base_student", "teacher", "vs_teacher"),
                       pw.make_pairs(scored, "merged_student", "teacher", "vs_teacher"),
                       pw.make_pairs(scored, "merged_student", "base_student", "vs_base")], ignore_index=True)
    judged = pw.judge_pairs(pairs, _complete(judge))
    return rp.attach_judgments(scored, judged, adapter_version="v1", run_id="run-1")


def _summary(results):
    return summary_table(results, pd.DataFrame(), CATS, adapter_version="v1", run_id="run-1", n_boot=300)


def _row(summary, variant="merged_student", category="__all__"):
    return summary[(summary["variant"] == variant) & (summary["category"] == category)].iloc[0]


def test_summary_stores_the_paired_change_vs_base():
    s = _summary(_results(_prefers_teacher_then_merged))
    c = _row(s, category="classify")
    assert c["n_paired"] == N and c["base_score"] == pytest.approx(2 / N)
    assert c["delta_vs_base"] == pytest.approx(9 / N) and c["delta_ci_low"] > 0 and c["change"] == "improved"
    assert c["transfer_ratio"] == pytest.approx(11 / N)
    m = _row(s, category="maths")
    assert (m["delta_vs_base"], m["delta_ci_low"], m["delta_ci_high"], m["change"]) == (0.0, 0.0, 0.0,
                                                                                        "no measurable change")
    assert pd.isna(_row(s, "base_student")["change"]) and pd.isna(_row(s, "teacher")["delta_vs_base"])
    assert rp.headline(s)["improved_categories"] == ["classify"]


def test_judge_with_signal_shows_win_rates_and_cis():
    results = _results(_prefers_teacher_then_merged)
    s = _summary(results)
    o = _row(s)
    assert o["judge_signal"] == "ok" and o["base_judge_signal"] == "ok"
    assert o["win_rate_vs_teacher"] == 0.0 and o["win_rate_vs_base"] == 1.0 and o["consistency_rate"] == 1.0
    md = rp.markdown_summary(s, pd.DataFrame(), pd.DataFrame(), rp.failure_analysis(results), "v1")
    assert "win rate vs base: **100.0% (95% CI 100.0%–100.0%)**" in md
    assert "no signal" not in md


def test_judge_without_signal_has_no_win_rate_anywhere():
    results = _results(_position_biased)
    s = _summary(results)
    for variant in ("base_student", "merged_student"):
        rows = s[s["variant"] == variant]
        # every category inherits the variant's missing signal; the evidence (ties, consistency) stays
        assert (rows["judge_signal"] == "no signal (consistency 0%)").all()
        assert rows["win_rate_vs_teacher"].isna().all() and rows["win_ci_low"].isna().all()
        assert rows["win_ci_high"].isna().all() and (rows["ties"] == rows["n_judged"]).all()
    o = _row(s)
    assert o["base_judge_signal"] == "no signal (consistency 0%)" and math.isnan(o["win_rate_vs_base"])
    assert o["consistency_rate"] == 0.0

    head = rp.headline(s)
    assert rp.win_rate_text(head, "teacher") == "judge has no signal here (consistency 0%)"
    assert rp.iteration_advice(head["win_rate_vs_teacher"], head["judge_signal"])["band"] == \
        "judge has no signal here (consistency 0%)"
    md = rp.markdown_summary(s, pd.DataFrame(), pd.DataFrame(), rp.failure_analysis(results), "v1")
    assert "win rate vs teacher: **judge has no signal here (consistency 0%)**" in md
    assert "win rate vs base: **judge has no signal here (consistency 0%)**" in md
    assert "50.0%" not in md  # the position-bias tie rate is never shown as a result

    strata = stratified_breakdown(results, n_boot=200, judge_signals=judge_signals(s))
    d = strata["difficulty"]
    assert d[d["variant"] != "teacher"]["win_rate_vs_teacher"].isna().all()
    assert set(d[d["variant"] == "merged_student"]["judge_signal"]) == {"no signal (consistency 0%)"}


def test_all_ties_in_one_stratum_hide_its_win_rate():
    results = _results(_prefers_teacher_then_merged)
    # the merged student ties the teacher on every hard item: no zero-width CI for that stratum
    hard = (results["variant"] == "merged_student") & (results["difficulty"] == "hard")
    results.loc[hard, ["judge_verdict", "judge_score"]] = ["tie", 0.5]
    s = _summary(results)
    strata = stratified_breakdown(results, n_boot=200, judge_signals=judge_signals(s))
    d = strata["difficulty"].set_index(["variant", "difficulty"])
    assert d.loc[("merged_student", "hard"), "judge_signal"] == f"no signal (all {N} comparisons tied)"
    assert math.isnan(d.loc[("merged_student", "hard"), "win_rate_vs_teacher"])
    assert d.loc[("merged_student", "easy"), "win_rate_vs_teacher"] == 0.0


def test_html_first_screen_is_the_change_table(tmp_path):
    results = _results(_position_biased)
    s = _summary(results)
    html_text = render_html(results=results, summary=s, efficiency=pd.DataFrame(columns=["variant", "status"]),
                            strata=stratified_breakdown(results, n_boot=200, judge_signals=judge_signals(s)),
                            failures=rp.failure_analysis(results), trend=pd.DataFrame(), adapter_version="v1",
                            run_id="run-1", teacher_price={})
    headings = re.findall(r"<h2>(.*?)</h2>", html_text)
    assert headings[0] == "What changed: merged student vs base student"
    lead = html_text[html_text.index("<section id='change-vs-base'>"):html_text.index("</section>")]
    assert "Improved vs the base student: classify (+0.750, 95% CI +" in lead
    assert "<td>classify</td>" in lead and "<td>improved</td>" in lead and "<td>no measurable change</td>" in lead
    win = re.search(r"id='win-vs-teacher'>([^<]*)<", html_text).group(1)
    assert win == "judge has no signal here (consistency 0%)"
    assert "50.0%" not in html_text


def test_eval_summary_takes_the_new_columns_and_old_databases_get_them(tmp_path):
    db = tmp_path / "old.duckdb"
    added = ["n_paired", "base_score", "delta_vs_base", "delta_ci_low", "delta_ci_high", "change", "judge_signal",
             "base_judge_signal"]
    with duckdb.connect(str(db)) as conn:  # the table as it shipped before these columns
        conn.execute(ledger.TABLES["eval_summary"])
        for col in added:
            conn.execute(f"ALTER TABLE eval_summary DROP COLUMN {col}")
    store = ledger.open_store(str(db))
    cols = set(store.query_df("DESCRIBE eval_summary")["column_name"])
    assert set(SUMMARY_COLUMNS) <= cols
    s = _summary(_results(_position_biased))
    store.replace_rows("eval_summary", s, "adapter_version = ?", ["v1"])
    got = store.query_df("SELECT category, change, delta_ci_low, judge_signal, win_rate_vs_teacher FROM eval_summary "
                         "WHERE variant = 'merged_student' ORDER BY category")
    assert list(got["category"]) == ["__all__", "classify", "maths"]
    assert list(got["change"]) == ["improved", "improved", "no measurable change"]
    assert got["win_rate_vs_teacher"].isna().all() and (got["judge_signal"] == "no signal (consistency 0%)").all()
    assert np.isfinite(got["delta_ci_low"]).all()


def test_a_loss_from_a_judge_without_signal_is_no_failure():
    def mostly_position_biased(prompt):
        # one item in four is a consistent teacher win, the rest follow the position: consistency 25%
        q = int(prompt.split("question ")[1].split()[0])
        a = prompt.split("Response A:")[1].split("Response B:")[0]
        if q % 4 == 0 and ("TEACHER" in a or "TEACHER" in prompt.split("Response B:")[1]):
            return "Winner: A" if "TEACHER" in a else "Winner: B"
        return "Winner: A"
    results = _results(mostly_position_biased)
    merged = results[results["variant"] == "merged_student"]
    assert (merged["judge_verdict"] == "loss").sum() == 6  # items 0, 4, 8 of both categories
    assert "judge_loss" not in set(merged["failure_category"].dropna())
    assert _row(_summary(results))["judge_signal"] == "no signal (consistency 25%)"
