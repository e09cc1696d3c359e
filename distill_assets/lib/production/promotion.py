"""The promotion decision: a new adapter is promoted only if it passes the eval gate and is not worse than the
promoted one; a failure is `resolved` once a promoted model passes it.

`failure_resolution` (defs/failure_resolution.py) is the one writer of `model_versions.promoted`. It runs after
`eval_report` and its `eval_gate` check (which only reports) and, in order:

1. `record_gate`: the absolute criteria (beats the base, meets every category's transfer target, the eval
   gate's `gate_decision`) become the candidate's `model_versions` row;
2. `decide`: the relative criterion. On the **held-out production failures**, the candidate's mean task score
   must be >= the promoted model's minus `promotion_tolerance`; the promoted model's score on a failure is its
   own eval result when an earlier eval covered it, else the score of the failure's `bad_output` (what the
   serving model actually answered). On the **standard eval set** (source 'eval'), the same comparison over the
   examples both versions were evaluated on;
3. `record`: every decision is kept in `promotion_decisions`; a candidate that passed the gate but is worse has
   its `model_versions.promoted` set back to false with the reason appended, so the newest promoted row stays
   the model to serve.

Resolution after a promotion: held-out failures whose candidate score reaches `failure_pass_score` move
held_out -> resolved; training-side failures (in_training) are answered by the promoted merged model and scored
the same way, since the eval set does not hold them.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from distill_assets.lib.evaluation import variants as vr
from distill_assets.lib.evaluation.gate import gate_decision, gate_targets, record_decision
from distill_assets.lib.evaluation.metrics import MERGED, score_generations, score_response
from distill_assets.lib.production import HELD_OUT, HELDOUT_SPLIT, IN_TRAINING, RESOLVED
from distill_assets.lib.production.state import set_status
from distill_assets.lib.records import eval_id, gold_reference
from distill_assets.lib.tasks import TaskFile
from resources.clock import utcnow
from resources.store import DuckDBStore, insert_df

HELDOUT_SOURCE, EVAL_SOURCE = "production_heldout", "eval"


def _finite(v: Any) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _scores(df: pd.DataFrame | None, source: str, variant: str = MERGED) -> pd.Series:
    """example_id -> score for one source, finite scores only (an infra error is unknown, not a 0)."""
    if df is None or df.empty:
        return pd.Series(dtype=float)
    d = df[(df["source"] == source) & (df["variant"] == variant)] if "variant" in df.columns else df[
        df["source"] == source]
    d = d.loc[d["score"].map(_finite).astype(bool)]
    return d.drop_duplicates("example_id", keep="last").set_index("example_id")["score"].astype(float)


def compare_versions(candidate: pd.DataFrame, baseline: pd.DataFrame | None, tolerance: float = 0.0,
                     variant: str = MERGED) -> dict:
    """Pure: is the candidate not worse than the baseline on held-out failures and on the standard eval set?

    Both frames are eval_results-like rows (example_id, variant, source, score); `baseline` may also hold
    rows without `variant` (scores of failures' bad outputs). Only examples scored for both count. With no
    baseline (nothing promoted yet) the candidate passes this criterion; the absolute gate still applies."""
    out: dict[str, Any] = {"passed": True, "reasons": [], "baseline": baseline is not None and not baseline.empty}
    for key, source in (("heldout", HELDOUT_SOURCE), ("eval", EVAL_SOURCE)):
        c = _scores(candidate, source, variant)
        b = _scores(baseline, source, variant)
        common = c.index.intersection(b.index)
        cm = float(c[common].mean()) if len(common) else None
        bm = float(b[common].mean()) if len(common) else None
        out[key] = {"n": int(len(common)), "candidate": cm, "baseline": bm}
        if len(common) and cm < bm - tolerance:
            out["passed"] = False
            label = "held-out production failures" if key == "heldout" else "the standard eval set"
            out["reasons"].append(f"worse than the promoted model on {label}: {cm:.3f} < {bm:.3f}"
                                  + (f" - {tolerance:.3f}" if tolerance else "") + f" over {len(common)} examples")
    return out


def passed_failures(results: pd.DataFrame, failures: pd.DataFrame, tasks: TaskFile, variant: str = MERGED
                    ) -> list[str]:
    """Pure: failure ids whose score (by example id -> failure id map in `failures.example_id`) passes."""
    if results.empty or failures.empty:
        return []
    r = results[results["variant"] == variant] if "variant" in results.columns else results
    scores = r.drop_duplicates("example_id", keep="last").set_index("example_id")
    out = []
    for f in failures.itertuples(index=False):
        if f.example_id not in scores.index:
            continue
        row = scores.loc[f.example_id]
        status, score = row.get("task_status"), row.get("score")
        if status == "pass" or (_finite(score) and float(score) >= tasks.category(f.category).failure_pass_score):
            out.append(f.failure_id)
    return out


# ----------------------------------------------------------------------------------------------- wiring


def heldout_map(store: DuckDBStore) -> pd.DataFrame:
    """Held-out failures with the eval_set id they get (records.eval_id of the input, source production_heldout)."""
    df = store.query_df(
        "SELECT failure_id, category, input, bad_output, expected, status FROM production_failures WHERE split = ?",
        [HELDOUT_SPLIT])
    df["example_id"] = [eval_id(c, str(i), None, HELDOUT_SOURCE) for c, i in zip(df["category"], df["input"])]
    return df


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) and v.strip() else None


def failure_score(category, response: Any, expected: Any) -> dict:
    """Score one answer to a failure's prompt: final-answer match / label accuracy against `expected` for
    math and label categories (ROUGE-L of a correct "... the answer is: 42" against "42" is about 0.2, so a
    fixed math failure would never count as passed), ROUGE-L against `expected` otherwise."""
    return score_response(category.verify, response if isinstance(response, str) else None,
                          reference=gold_reference(category.verify, expected), tests=None, entry_point=None,
                          reference_response=_text(expected), labels=category.labels)


def bad_output_scores(heldout: pd.DataFrame, tasks: TaskFile) -> pd.DataFrame:
    """What the serving model scored on each held-out failure: its reported bad output, scored like an answer."""
    rows = []
    for f in heldout.itertuples(index=False):
        c = tasks.category(f.category) if f.category in tasks.names else None
        if c is None:
            continue
        s = failure_score(c, f.bad_output, f.expected)
        rows.append({"example_id": f.example_id, "source": HELDOUT_SOURCE, "score": s["score"],
                     "task_status": s["task_status"]})
    return pd.DataFrame(rows, columns=["example_id", "source", "score", "task_status"])


def _table(store: DuckDBStore, name: str) -> bool:
    return store.table_exists(name)


def promoted_baseline(store: DuckDBStore, candidate: str) -> str | None:
    if not _table(store, "model_versions"):
        return None
    df = store.query_df(
        "SELECT adapter_version FROM model_versions WHERE promoted AND adapter_version <> ? "
        "ORDER BY decided_at DESC LIMIT 1", [candidate])
    return None if df.empty else str(df.iloc[0]["adapter_version"])


def record_gate(store: DuckDBStore, candidate: str, tasks: TaskFile, min_win_rate_vs_base: float,
                severity: str, run_id: str) -> dict:
    """The eval gate's absolute criteria for the candidate, written as its `model_versions` row."""
    summary = store.query_df("SELECT * FROM eval_summary WHERE adapter_version = ?", [candidate])
    gate = gate_decision(summary, gate_targets(tasks), min_win_rate_vs_base)
    # the eval's run, as the check recorded it; `run_id` (this run) when eval_summary does not say
    runs = summary["run_id"].dropna() if "run_id" in summary.columns else pd.Series(dtype=object)
    record_decision(store, candidate, gate, severity, str(runs.iloc[-1]) if len(runs) else run_id)
    return gate


def decide(store: DuckDBStore, candidate: str, tasks: TaskFile) -> dict:
    """Load candidate and baseline results, compare, and return the decision (nothing written)."""
    heldout = heldout_map(store)
    results = store.query_df("SELECT * FROM eval_results WHERE adapter_version = ?", [candidate])
    gate = store.query_df("SELECT promoted FROM model_versions WHERE adapter_version = ?", [candidate]) \
        if _table(store, "model_versions") else pd.DataFrame()
    gate_promoted = bool(gate.iloc[0]["promoted"]) if not gate.empty else False
    baseline_version = promoted_baseline(store, candidate)
    baseline = None
    if baseline_version is not None:
        base = store.query_df("SELECT * FROM eval_results WHERE adapter_version = ? AND variant = ?",
                              [baseline_version, MERGED])
        # failures the baseline was never evaluated on: score what it actually answered in production
        missing = heldout[~heldout["example_id"].isin(base["example_id"])]
        extra = bad_output_scores(missing, tasks).assign(variant=MERGED)
        baseline = pd.concat([base, extra], ignore_index=True) if not extra.empty else base
    tol = max((c.promotion_tolerance for c in tasks.categories), default=0.0)
    cmp = compare_versions(results, baseline, tolerance=tol)
    if not gate_promoted:
        cmp["reasons"] = ["eval_gate did not promote it"] + cmp["reasons"]
    return {"candidate": candidate, "baseline_version": baseline_version, "gate_promoted": gate_promoted,
            "promoted": gate_promoted and cmp["passed"], "comparison": cmp, "results": results,
            "heldout": heldout}


def resolve_heldout(store: DuckDBStore, decision: dict, tasks: TaskFile) -> list[str]:
    held = decision["heldout"]
    held = held[held["status"] == HELD_OUT]
    ids = passed_failures(decision["results"], held, tasks)
    set_status(store, ids, RESOLVED, resolved_by=decision["candidate"])
    return ids


def resolve_trained(store: DuckDBStore, version: str, tasks: TaskFile, max_new_tokens: int,
                    log=print) -> tuple[list[str], str | None]:
    """Answer the in_training failures with the promoted merged model and resolve those it now passes."""
    df = store.query_df("SELECT failure_id, category, input, expected FROM production_failures WHERE status = ?",
                        [IN_TRAINING])
    df = df[df["category"].isin(tasks.names)]
    if df.empty:
        return [], None
    # the promoted adapter's own merge: answers of another model would resolve failures in its name
    spec = vr.merged_of_adapter(store, version)
    if spec is None or not spec.path:
        return [], (f"skipped: no merged model of the promoted adapter {version} to answer in_training failures; "
                    "materialize merged_model")
    cats = {c.name: c for c in tasks.categories}
    ev = pd.DataFrame({"eval_id": df["failure_id"], "category": df["category"], "prompt": df["input"],
                       "difficulty": "medium",
                       "reference": [gold_reference(cats[c].verify, e) for c, e in zip(df["category"], df["expected"])],
                       "tests": "[]", "entry_point": None,
                       "reference_response": df["expected"], "source": "production_train"})
    gens, eff = vr.run_variants([spec], vr.build_items(ev, cats), max_new_tokens=max_new_tokens,
                                teacher_complete=None, teacher_price={}, usd_per_hour=0.0,
                                threads=vr.default_threads(), log=log)
    if gens.empty:
        reason = eff.iloc[0].get("reason") if not eff.empty and "reason" in eff.columns else "no answers"
        return [], str(reason)
    scored = score_generations(ev, gens, cats)
    ids = passed_failures(scored, df.assign(example_id=df["failure_id"]), tasks)
    set_status(store, ids, RESOLVED, resolved_by=version)
    return ids, None


def comparison_markdown(decision: dict) -> str:
    """The candidate against the promoted model on both sets, as the UI shows it next to eval_report's."""
    cmp = decision["comparison"]
    base = decision["baseline_version"] or "none"

    def f(v):
        return "-" if v is None else f"{v:.3f}"

    lines = [f"candidate `{decision['candidate']}` vs promoted `{base}`", "",
             "| set | examples scored by both | candidate | promoted |", "|---|---:|---:|---:|"]
    for key, label in (("heldout", "held-out production failures"), ("eval", "standard eval set")):
        c = cmp[key]
        lines.append(f"| {label} | {c['n']} | {f(c['candidate'])} | {f(c['baseline'])} |")
    verdict = "promoted" if decision["promoted"] else "not promoted"
    lines += ["", f"**{verdict}**" + (": " + "; ".join(cmp["reasons"]) if cmp["reasons"] else
                                      ": not worse on either set")]
    return "\n".join(lines)


def record(store: DuckDBStore, decision: dict, resolved: int, run_id: str) -> None:
    cmp = decision["comparison"]
    decided = pd.DataFrame([{
        "adapter_version": decision["candidate"], "baseline_version": decision["baseline_version"],
        "gate_promoted": decision["gate_promoted"], "promoted": decision["promoted"],
        "heldout_n": cmp["heldout"]["n"], "heldout_candidate": cmp["heldout"]["candidate"],
        "heldout_baseline": cmp["heldout"]["baseline"], "eval_n": cmp["eval"]["n"],
        "eval_candidate": cmp["eval"]["candidate"], "eval_baseline": cmp["eval"]["baseline"],
        "reasons": json.dumps(cmp["reasons"]), "resolved": resolved, "run_id": run_id, "decided_at": utcnow()}])

    def write(conn) -> None:  # may run again after a lake commit conflict
        insert_df(conn, "promotion_decisions", decided, on_conflict="replace")
        if decision["gate_promoted"] and not decision["promoted"]:
            # the absolute gate passed but the candidate regressed: the previous promoted model keeps serving
            row = conn.execute("SELECT reasons FROM model_versions WHERE adapter_version = ?",
                               [decision["candidate"]]).fetchall()
            reasons = json.loads(row[0][0]) if row and row[0][0] else []
            conn.execute("UPDATE model_versions SET promoted = false, reasons = ? WHERE adapter_version = ?",
                         [json.dumps(reasons + cmp["reasons"]), decision["candidate"]])

    store.transact(write)
