"""What changed: each student variant against the base student on the same eval items.

The difference is paired (student − base on each item, then the mean), and its 95% CI is a percentile
bootstrap that resamples items, so an item that both get right or both get wrong adds no noise. A category is
"improved" only when the whole interval lies above 0, "regressed" when it lies below 0, and otherwise shows
"no measurable change" -- including when there are too few paired items for an interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from distill_assets.lib.evaluation.metrics import BASE, MERGED, OVERALL, TEACHER, bootstrap_ci

IMPROVED, REGRESSED, NO_CHANGE = "improved", "regressed", "no measurable change"
MIN_PAIRED = 2  # one item gives a difference but no interval

CHANGE_COLUMNS = ["variant", "category", "n_paired", "base_score", "delta_vs_base", "delta_ci_low",
                  "delta_ci_high", "change"]


def paired_ci(diffs: Iterable[float], n_boot: int = 2000, confidence: float = 0.95,
              seed: int = 0) -> tuple[float, float]:
    """Bootstrap CI of the mean paired difference (items resampled); (NaN, NaN) below MIN_PAIRED items."""
    x = [float(d) for d in diffs if d is not None and math.isfinite(float(d))]
    if len(x) < MIN_PAIRED:
        return float("nan"), float("nan")
    return bootstrap_ci(x, n_boot=n_boot, confidence=confidence, seed=seed)


def change_label(ci_low: float, ci_high: float) -> str:
    if ci_low is not None and not math.isnan(ci_low) and ci_low > 0:
        return IMPROVED
    if ci_high is not None and not math.isnan(ci_high) and ci_high < 0:
        return REGRESSED
    return NO_CHANGE


def paired_changes(results: pd.DataFrame, baseline: str = BASE, n_boot: int = 2000,
                   seed: int = 0) -> pd.DataFrame:
    """One row per (variant, category) and (variant, '__all__') for every variant but the teacher and the
    baseline: the items both scored (n_paired), the baseline's mean on them, the mean paired difference with
    its CI, and the change label. Empty when the baseline was not evaluated."""
    if results.empty or baseline not in set(results["variant"]):
        return pd.DataFrame(columns=CHANGE_COLUMNS)
    base = results[results["variant"] == baseline].set_index("example_id")["score"].astype(float)
    rows = []
    for variant, vg in results[~results["variant"].isin([TEACHER, baseline])].groupby("variant", sort=True):
        v = vg.assign(base_score=vg["example_id"].map(base), score=vg["score"].astype(float))
        v = v[v["score"].notna() & v["base_score"].notna()]
        groups = [(c, g) for c, g in v.groupby("category", sort=True)] + [(OVERALL, v)]
        for cat, g in groups:
            diffs = (g["score"] - g["base_score"]).to_numpy()
            lo, hi = paired_ci(diffs, n_boot=n_boot, seed=seed)
            rows.append({"variant": variant, "category": cat, "n_paired": len(g),
                         "base_score": float(g["base_score"].mean()) if len(g) else np.nan,
                         "delta_vs_base": float(diffs.mean()) if len(g) else np.nan,
                         "delta_ci_low": lo, "delta_ci_high": hi, "change": change_label(lo, hi)})
    return pd.DataFrame(rows, columns=CHANGE_COLUMNS)


# --- the lead of the report and of the metadata -------------------------------------------------------------

def _rows(summary: pd.DataFrame, variants: list[str]) -> pd.DataFrame:
    if summary.empty or "change" not in summary.columns:
        return summary.iloc[0:0]
    s = summary[summary["variant"].isin(variants) & summary["change"].notna()]
    order = {v: i for i, v in enumerate(variants)}
    # categories first, the pooled row last
    return s.assign(_v=s["variant"].map(order), _all=s["category"] == OVERALL).sort_values(
        ["_v", "_all", "category"]).drop(columns=["_v", "_all"])


def categories_with(summary: pd.DataFrame, change: str, variant: str = MERGED) -> list[str]:
    s = _rows(summary, [variant])
    return sorted(s[(s["category"] != OVERALL) & (s["change"] == change)]["category"].astype(str))


def export_variants(summary: pd.DataFrame) -> list[str]:
    """Evaluated variants other than teacher, base and merged student (gguf_q8_0, awq, ...)."""
    present = summary[summary["change"].notna()]["variant"] if "change" in summary.columns else []
    return sorted(set(present) - {TEACHER, BASE, MERGED})


def _float(v) -> float:
    return float(v) if v is not None and pd.notna(v) else float("nan")


def _signed(v) -> str:
    v = _float(v)
    return "—" if math.isnan(v) else f"{v:+.3f}"


def _score(v) -> str:
    v = _float(v)
    return "—" if math.isnan(v) else f"{v:.3f}"


def change_display(summary: pd.DataFrame, variants: list[str] | None = None) -> pd.DataFrame:
    """The change table as text cells: one row per category (and 'all'), student vs base vs teacher on the
    task metric, the paired difference with its 95% CI, the transfer ratio and the label."""
    variants = variants or [MERGED]
    s = _rows(summary, variants)
    out = []
    for r in s.to_dict("records"):
        base, delta, lo, hi = (_float(r.get(k)) for k in ("base_score", "delta_vs_base", "delta_ci_low",
                                                           "delta_ci_high"))
        student = base + delta  # the student's mean on the paired items
        ci = "—" if math.isnan(lo) else f"{_signed(lo)} to {_signed(hi)}"
        tr = r.get("transfer_ratio")
        tr = float(tr) if pd.notna(tr) else float("nan")
        row = {"variant": r["variant"]} if variants != [MERGED] else {}
        row.update({"category": "all" if r["category"] == OVERALL else r["category"], "metric": r.get("metric"),
                    "n": int(r["n_paired"]) if pd.notna(r.get("n_paired")) else 0,
                    "base": _score(base), "student": _score(student), "teacher": _score(r.get("teacher_score")),
                    "student − base": _signed(delta), "95% CI": ci,
                    "transfer": "—" if math.isnan(tr) else f"{100 * tr:.1f}%",
                    "change": r["change"]})
        out.append(row)
    return pd.DataFrame(out)


def change_markdown(summary: pd.DataFrame, variants: list[str] | None = None) -> str:
    """The change table as markdown, cells kept as written ('+0.750', not re-read as the number 0.75)."""
    table = change_display(summary, variants)
    if table.empty:
        return f"_no change vs base: the {BASE} was not evaluated_"
    return table.to_markdown(index=False, disable_numparse=True)


def change_sentence(summary: pd.DataFrame, variant: str = MERGED) -> str:
    """The sentence that opens the report: which categories improved vs the base student, or that none did."""
    s = _rows(summary, [variant])
    if s.empty:
        return f"The {BASE} was not evaluated, so no change against it can be measured."
    by_cat = s.set_index("category")

    def named(cats: list[str]) -> str:
        return ", ".join(f"{c} ({_signed(by_cat.loc[c, 'delta_vs_base'])}, 95% CI "
                         f"{_signed(by_cat.loc[c, 'delta_ci_low'])} to {_signed(by_cat.loc[c, 'delta_ci_high'])})"
                         for c in cats)

    improved, regressed = categories_with(summary, IMPROVED, variant), categories_with(summary, REGRESSED, variant)
    text = (f"Improved vs the base student: {named(improved)}." if improved
            else "No category improved measurably vs the base student (no 95% CI of student − base lies above 0).")
    if regressed:
        text += f" Regressed: {named(regressed)}."
    return text


__all__ = ["IMPROVED", "REGRESSED", "NO_CHANGE", "CHANGE_COLUMNS", "paired_ci", "change_label", "paired_changes",
           "categories_with", "export_variants", "change_display", "change_markdown", "change_sentence"]
