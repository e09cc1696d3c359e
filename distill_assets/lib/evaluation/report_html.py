"""The HTML evaluation report: tables, base64 PNG plots, failure analysis, and the summary numbers as JSON.

The summary numbers are embedded as `<script id="eval-summary">`, computed from exactly the rows that go to
`eval_results`, so the report and the table cannot disagree.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from distill_assets.lib.evaluation import change as ch
from distill_assets.lib.evaluation import pairwise as pw
from distill_assets.lib.evaluation.metrics import OVERALL
from distill_assets.lib.evaluation.report import fmt, headline, iteration_advice, win_rate_text


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt  # deferred: heavy optional dependency

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plots(summary: pd.DataFrame, strata: dict[str, pd.DataFrame], efficiency: pd.DataFrame,
           trend: pd.DataFrame) -> dict[str, str]:
    import matplotlib  # deferred: heavy optional dependency

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # deferred: heavy optional dependency

    out = {}
    ok = summary[summary["status"].fillna("ok") == "ok"]
    allrows = ok[ok["category"] == OVERALL]
    # win rates with CIs
    w = allrows[allrows["win_rate_vs_teacher"].notna()]
    if not w.empty:
        fig, ax = plt.subplots(figsize=(7, 3))
        y = w["win_rate_vs_teacher"].astype(float).to_numpy()
        err = np.vstack([y - w["win_ci_low"].astype(float).to_numpy(), w["win_ci_high"].astype(float).to_numpy() - y])
        ax.bar(w["variant"], y, yerr=err, capsize=4, color="#4c78a8")
        ax.axhline(0.5, color="gray", ls="--", lw=1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("win rate vs teacher")
        ax.set_title("Position-debiased win rate vs teacher (95% bootstrap CI)")
        out["win_rate"] = _png(fig)
    # transfer per category
    t = ok[(ok["category"] != OVERALL) & ok["transfer_ratio"].notna()]
    if not t.empty:
        cats = sorted(t["category"].unique())
        variants = list(dict.fromkeys(t["variant"]))
        fig, ax = plt.subplots(figsize=(8, 3.2))
        width = 0.8 / max(1, len(variants))
        for i, v in enumerate(variants):
            tv = t[t["variant"] == v].set_index("category")
            ax.bar(np.arange(len(cats)) + i * width, [tv["transfer_ratio"].get(c, np.nan) for c in cats], width,
                   label=v)
        targets = t.drop_duplicates("category").set_index("category")["transfer_target"]
        for j, c in enumerate(cats):
            ax.hlines(targets.get(c, np.nan), j - 0.1, j + 0.8, colors="red", linestyles="--", lw=1)
        ax.set_xticks(np.arange(len(cats)) + 0.4 - width / 2, cats)
        ax.set_ylabel("student / teacher")
        ax.set_title("Transfer ratio by category (red: target)")
        ax.legend(fontsize=7)
        out["transfer"] = _png(fig)
    # strata
    for dim in ("difficulty", "length_bucket"):
        s = strata.get(dim)
        if s is None or s.empty:
            continue
        fig, ax = plt.subplots(figsize=(7, 3))
        piv = s.pivot_table(index=dim, columns="variant", values="task_score", aggfunc="first")
        piv.plot.bar(ax=ax, rot=0)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("task score")
        ax.set_title(f"Task score by {dim.replace('_', ' ')}")
        ax.legend(fontsize=7)
        out[f"strata_{dim}"] = _png(fig)
    # efficiency
    e = efficiency[efficiency["status"] == "ok"] if not efficiency.empty else efficiency
    if not e.empty:
        fig, axes = plt.subplots(1, 3, figsize=(11, 3))
        axes[0].bar(e["variant"], e["latency_p50_s"].astype(float), label="p50")
        axes[0].bar(e["variant"], (e["latency_p95_s"] - e["latency_p50_s"]).astype(float),
                    bottom=e["latency_p50_s"].astype(float), alpha=0.5, label="p95")
        axes[0].set_title("latency (s)")
        axes[0].legend(fontsize=7)
        axes[1].bar(e["variant"], e["tokens_per_s"].astype(float), color="#59a14f")
        axes[1].set_title("generated tokens/s")
        axes[2].bar(e["variant"], e["usd_per_1m_tokens"].astype(float), color="#e15759")
        axes[2].set_title("$ per 1M tokens")
        for ax in axes:
            ax.tick_params(axis="x", rotation=45, labelsize=7)
        out["efficiency"] = _png(fig)
    if trend is not None and len(trend) > 1:
        fig, ax = plt.subplots(figsize=(7, 3))
        for c in ("task_score", "transfer_ratio", "win_rate_vs_teacher", "win_rate_vs_base"):
            ax.plot(range(len(trend)), pd.to_numeric(trend[c], errors="coerce"), marker="o", label=c)
        ax.set_xticks(range(len(trend)), [str(v)[:10] for v in trend["adapter_version"]], rotation=30, fontsize=7)
        ax.set_title("Trend across adapter versions (merged student)")
        ax.legend(fontsize=7)
        out["trend"] = _png(fig)
    return out


_INT_COLS = {"n", "n_paired", "n_task", "n_judged", "n_scored", "n_pairs", "n_valid", "wins", "ties", "losses", "requests",
             "errors", "unparseable", "judge_errors", "base_unparseable", "infra_errors", "count"}


def _table(df: pd.DataFrame, pct_cols: tuple = (), max_rows: int | None = None) -> str:
    if df is None or df.empty:
        return "<p><em>(none)</em></p>"
    d = df if max_rows is None else df.head(max_rows)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in d.columns)
    body = []
    for r in d.itertuples(index=False):
        cells = []
        for c, v in zip(d.columns, r):
            if c in _INT_COLS and isinstance(v, (float, np.floating)) and not math.isnan(v):
                v = int(v)
            cells.append(f"<td>{html.escape(fmt(v, pct=c in pct_cols))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _json_safe(df: pd.DataFrame) -> list[dict]:
    out = []
    for rec in df.to_dict("records"):
        clean = {}
        for k, v in rec.items():
            if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
                clean[k] = None
            elif isinstance(v, (np.integer,)):
                clean[k] = int(v)
            elif isinstance(v, (np.floating,)):
                clean[k] = None if math.isnan(v) else float(v)
            elif isinstance(v, (np.bool_,)):
                clean[k] = bool(v)
            elif isinstance(v, (pd.Timestamp, datetime)):
                clean[k] = v.isoformat()
            else:
                clean[k] = v
        out.append(clean)
    return out


CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;
vertical-align:top}th{background:#f3f3f3}.fail{border:1px solid #e0b4b4;background:#fff6f6;padding:.6em;margin:.6em 0}
pre{white-space:pre-wrap;background:#f8f8f8;padding:.4em;margin:.2em 0;max-height:18em;overflow:auto}
.key{font-size:1.1em}.skip{color:#a60}.lead{font-size:1.25em;font-weight:600}"""


def render_html(*, results: pd.DataFrame, summary: pd.DataFrame, efficiency: pd.DataFrame, strata: dict,
                failures: pd.DataFrame, trend: pd.DataFrame, adapter_version: str, run_id: str,
                teacher_price: dict, config: dict | None = None) -> str:
    plots = _plots(summary, strata, efficiency, trend)
    head = headline(summary)
    advice = iteration_advice(head.get("win_rate_vs_teacher"), head.get("judge_signal"))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>distill eval {html.escape(adapter_version)}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>Distillation evaluation</h1><p>adapter version <code>{html.escape(adapter_version)}</code> · "
             f"run <code>{html.escape(run_id)}</code> · {datetime.now(UTC):%Y-%m-%d %H:%M UTC} · "
             f"{results['example_id'].nunique() if not results.empty else 0} eval examples</p>"]
    # the first screen: what changed against the base student, per category, on the task metric
    parts.append("<section id='change-vs-base'><h2>What changed: merged student vs base student</h2>"
                 f"<p class='lead' id='change-sentence'>{html.escape(ch.change_sentence(summary))}</p>"
                 "<p>Task metric per category on the same eval items; <i>student − base</i> is the mean paired "
                 "difference and its 95% CI a bootstrap over items. <i>improved</i>: the whole CI above 0; "
                 "<i>regressed</i>: below 0; otherwise no measurable change. Transfer = student / teacher.</p>"
                 + _table(ch.change_display(summary, [ch.MERGED])))
    exports = ch.export_variants(summary)
    if exports:
        parts.append("<h3>Exported variants vs base student</h3>" + _table(ch.change_display(summary, exports)))
    parts.append("</section>")
    parts.append("<h2>Key numbers (merged student)</h2><ul class='key'>")
    parts.append(f"<li>win rate vs teacher: <b id='win-vs-teacher'>{html.escape(win_rate_text(head, 'teacher'))}</b>; "
                 f"position consistency {fmt(head.get('consistency_rate'), True)}; "
                 f"unparseable verdicts {fmt(head.get('unparseable'))}, judge errors {fmt(head.get('judge_errors'))}</li>")
    parts.append(f"<li>win rate vs base: <b id='win-vs-base'>{html.escape(win_rate_text(head, 'base'))}</b>; "
                 f"position consistency {fmt(head.get('base_consistency_rate'), True)}</li>")
    parts.append(f"<li>task score <b>{fmt(head.get('task_score'))}</b>; overall transfer ratio "
                 f"<b id='transfer'>{fmt(head.get('transfer_ratio'), True)}</b>; all category targets met: "
                 f"{fmt(head.get('meets_target'))}</li></ul>")
    parts.append(f"<h3>Iteration advice: {html.escape(advice['band'])}</h3><ol>"
                 + "".join(f"<li>{html.escape(a)}</li>" for a in advice["advice"]) + "</ol>")
    skipped = summary[summary["status"].fillna("ok") != "ok"]
    if not skipped.empty:
        parts.append("<h3>Variants not evaluated</h3><ul>" + "".join(
            f"<li class='skip'><b>{html.escape(str(r.variant))}</b>: {html.escape(str(r.reason))}</li>"
            for r in skipped.itertuples()) + "</ul>")
    show = ["variant", "category", "metric", "n", "task_score", "task_ci_low", "task_ci_high", "teacher_score",
            "transfer_ratio", "transfer_target", "meets_target", "win_rate_vs_teacher", "win_ci_low", "win_ci_high",
            "consistency_rate", "judge_signal", "unparseable", "judge_errors", "win_rate_vs_base",
            "base_judge_signal"]
    ok = summary[summary["status"].fillna("ok") == "ok"]
    parts.append("<h2>Summary by variant and category</h2>" + _table(ok[show]))
    if "win_rate" in plots:
        parts.append(f"<img src='{plots['win_rate']}'>")
    parts.append("<h2>Transfer ratio</h2><p>student score / teacher score on the examples both answered. "
                 "Typical targets: simple ≥ 95%, moderate 85–95%, complex 75–90%; the gate uses each "
                 "category's <code>eval_target_transfer</code>.</p>")
    parts.append(_table(ok[ok["transfer_ratio"].notna()][["variant", "category", "task_score", "teacher_score",
                                                            "transfer_ratio", "transfer_target", "meets_target"]]))
    if "transfer" in plots:
        parts.append(f"<img src='{plots['transfer']}'>")
    parts.append("<h2>Stratified breakdown</h2>")
    for dim, s in strata.items():
        parts.append(f"<h3>by {html.escape(dim.replace('_', ' '))}</h3>" + _table(s))
        if f"strata_{dim}" in plots:
            parts.append(f"<img src='{plots[f'strata_{dim}']}'>")
    parts.append(f"<h2>Efficiency</h2><p>teacher price: {fmt(teacher_price.get('usd_per_1m_tokens'), digits=4)} "
                 f"$/1M tokens ({html.escape(str(teacher_price.get('source')))}); local variants: "
                 f"{fmt((config or {}).get('hardware_usd_per_hour'), digits=3)} $/hour of hardware ÷ measured "
                 "generated tokens/s.</p>")
    eff_view = efficiency.copy()
    if "size_bytes" in eff_view.columns:
        eff_view.insert(eff_view.columns.get_loc("size_bytes"), "size_mb",
                        pd.to_numeric(eff_view["size_bytes"], errors="coerce") / 1e6)
        eff_view = eff_view.drop(columns="size_bytes")
    parts.append(_table(eff_view))
    if "efficiency" in plots:
        parts.append(f"<img src='{plots['efficiency']}'>")
    parts.append("<h2>Trend vs previous adapter versions</h2>" + _table(trend))
    if "trend" in plots:
        parts.append(f"<img src='{plots['trend']}'>")
    parts.append("<h2>Failure analysis</h2>")
    if failures.empty:
        parts.append("<p>No losses and no failed examples.</p>")
    else:
        counts = failures.groupby(["variant", "failure_category"]).size().rename("count").reset_index()
        parts.append(_table(counts))
        for (variant, fcat), grp in failures.groupby(["variant", "failure_category"], sort=False):
            parts.append(f"<h3>{html.escape(variant)} · {html.escape(fcat)} ({len(grp)})</h3>")
            for r in grp.itertuples(index=False):
                parts.append(
                    f"<div class='fail'><b>{html.escape(r.category)}</b> · {html.escape(str(r.example_id))} · "
                    f"{html.escape(str(r.difficulty))} · task {html.escape(str(r.task_status))} · judge "
                    f"{html.escape(str(r.judge_verdict))}<br>prompt<pre>{html.escape(str(r.prompt))}</pre>"
                    f"student<pre>{html.escape(str(r.response))}</pre>"
                    f"teacher<pre>{html.escape(str(r.teacher_response))}</pre>"
                    f"task detail<pre>{html.escape(str(r.task_detail))}</pre>"
                    f"judge rationale<pre>{html.escape(str(r.judge_rationale or '(not judged)'))}</pre></div>")
    unp = results[results["judge_verdict"].isin([pw.UNPARSEABLE, pw.JUDGE_ERROR])]
    parts.append(f"<h2>Judge parse failures and errors ({len(unp)})</h2>")
    if not unp.empty:
        parts.append(_table(unp[["variant", "category", "example_id", "judge_verdict", "judge_rationale"]]))
    payload = {"adapter_version": adapter_version, "run_id": run_id, "summary": _json_safe(summary),
               "efficiency": _json_safe(efficiency), "headline": head, "advice": advice}
    parts.append("<script type='application/json' id='eval-summary'>"
                 + json.dumps(payload, default=str).replace("</", "<\\/") + "</script></body></html>")
    return "".join(parts)
