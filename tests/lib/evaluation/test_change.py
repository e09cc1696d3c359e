"""The paired change vs the base student: CI over items, the labels, and the table the report leads with."""

import math

import numpy as np
import pandas as pd
import pytest

from distill_assets.lib.evaluation import change as ch


def test_known_improvement_has_a_ci_above_zero():
    diffs = [1.0] * 15 + [0.0] * 5  # the student fixes 15 of 20 items, breaks none
    lo, hi = ch.paired_ci(diffs, n_boot=1000)
    assert 0 < lo <= 0.75 <= hi <= 1
    assert ch.change_label(lo, hi) == ch.IMPROVED


def test_symmetric_noise_is_no_measurable_change():
    diffs = [1.0] * 5 + [-1.0] * 5 + [0.0] * 10  # as many items fixed as broken
    lo, hi = ch.paired_ci(diffs, n_boot=1000)
    assert lo < 0 < hi
    assert ch.change_label(lo, hi) == ch.NO_CHANGE


def test_known_regression_has_a_ci_below_zero():
    lo, hi = ch.paired_ci([-1.0] * 8 + [0.0] * 2, n_boot=1000)
    assert hi < 0 and ch.change_label(lo, hi) == ch.REGRESSED


def test_one_item_gives_no_interval():
    lo, hi = ch.paired_ci([1.0])
    assert math.isnan(lo) and math.isnan(hi)
    assert ch.change_label(lo, hi) == ch.NO_CHANGE
    assert all(math.isnan(v) for v in ch.paired_ci([]))


def _results():
    """classify: base 0/10, merged 9/10 -> improved; maths: merged and base swap 3 items each way -> no change;
    gguf_q8_0 equals merged on classify; one base score is unknown (infra error) and is left out of the pairs."""
    rows = []
    for i in range(10):
        e = f"c{i}"
        rows += [{"example_id": e, "category": "classify", "variant": "teacher", "score": 1.0},
                 {"example_id": e, "category": "classify", "variant": "base_student", "score": 0.0},
                 {"example_id": e, "category": "classify", "variant": "merged_student", "score": float(i < 9)},
                 {"example_id": e, "category": "classify", "variant": "gguf_q8_0", "score": float(i < 9)}]
    for i in range(12):
        e = f"m{i}"
        base = float(i < 3 or 6 <= i < 9)
        merged = float(3 <= i < 9)
        rows += [{"example_id": e, "category": "maths", "variant": "teacher", "score": 1.0},
                 {"example_id": e, "category": "maths", "variant": "base_student",
                  "score": np.nan if i == 11 else base},
                 {"example_id": e, "category": "maths", "variant": "merged_student", "score": merged}]
    df = pd.DataFrame(rows)
    return df.assign(metric=np.where(df["category"] == "classify", "accuracy", "exact_match"))


def test_paired_changes_per_category_and_variant():
    out = ch.paired_changes(_results(), n_boot=500).set_index(["variant", "category"])
    assert "teacher" not in out.index.get_level_values(0) and "base_student" not in out.index.get_level_values(0)
    c = out.loc[("merged_student", "classify")]
    assert c["n_paired"] == 10 and c["delta_vs_base"] == pytest.approx(0.9) and c["base_score"] == 0.0
    assert c["delta_ci_low"] > 0 and c["change"] == ch.IMPROVED
    m = out.loc[("merged_student", "maths")]
    assert m["n_paired"] == 11  # the unknown base score is no pair
    assert m["delta_ci_low"] < 0 < m["delta_ci_high"] and m["change"] == ch.NO_CHANGE
    assert out.loc[("gguf_q8_0", "classify"), "change"] == ch.IMPROVED
    assert out.loc[("merged_student", "__all__"), "n_paired"] == 21


def test_no_base_no_change_rows():
    r = _results()
    assert ch.paired_changes(r[r["variant"] != "base_student"]).empty


def _summary():
    changes = ch.paired_changes(_results(), n_boot=500)
    return changes.assign(metric=np.where(changes["category"] == "maths", "exact_match", "accuracy"),
                          teacher_score=1.0, transfer_ratio=0.9)


def test_change_table_and_sentence_name_the_improved_category():
    s = _summary()
    assert ch.categories_with(s, ch.IMPROVED) == ["classify"]
    assert ch.categories_with(s, ch.REGRESSED) == []
    table = ch.change_display(s)
    assert list(table.columns) == ["category", "metric", "n", "base", "student", "teacher", "student − base",
                                   "95% CI", "transfer", "change"]
    assert list(table["category"]) == ["classify", "maths", "all"]  # categories first, the pooled row last
    row = table.iloc[0]
    assert (row["base"], row["student"], row["student − base"], row["change"]) == ("0.000", "0.900", "+0.900",
                                                                                   "improved")
    assert row["95% CI"].startswith("+") and " to " in row["95% CI"] and row["transfer"] == "90.0%"
    md = ch.change_markdown(s)
    header = [c.strip() for c in md.splitlines()[0].strip("|").split("|")]
    assert header == list(table.columns)
    classify_line = next(line for line in md.splitlines() if line.startswith("| classify"))
    assert "| +0.900 " in classify_line and "| improved " in classify_line and "| 0.000 " in classify_line
    assert "no measurable change" in md and "| all " in md
    sentence = ch.change_sentence(s)
    assert sentence.startswith("Improved vs the base student: classify (+0.900, 95% CI +")
    exports = ch.export_variants(s)
    assert exports == ["gguf_q8_0"]
    assert list(ch.change_display(s, exports)["variant"].unique()) == ["gguf_q8_0"]


def test_sentence_says_when_nothing_improved():
    s = _summary()
    s = s[s["category"] != "classify"]
    assert ch.change_sentence(s).startswith("No category improved measurably vs the base student")
    assert "base_student was not evaluated" in ch.change_sentence(s.iloc[0:0])
    s.loc[s["category"] == "maths", ["delta_vs_base", "delta_ci_low", "delta_ci_high", "change"]] = \
        [-0.5, -0.8, -0.2, ch.REGRESSED]
    assert "Regressed: maths (-0.500, 95% CI -0.800 to -0.200)." in ch.change_sentence(s)
