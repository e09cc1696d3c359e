"""`failure_resolution` as a Dagster materialization, after a stand-in `eval_report` and the real `eval_gate`:
held_out -> resolved only when the new model is promoted (absolute gate and not worse than the promoted model on
held-out failures and the standard eval set) and passes the failure; in_training failures only by the promoted
model's own merged weights; and `distill failures list` shows the result."""

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from checks.eval_report import build_eval_report_checks
from distill_assets.defs.failure_resolution import failure_resolution
from distill_assets.lib import ledger
from distill_assets.lib.evaluation.metrics import MERGED, OVERALL
from distill_assets.lib.production import intake, promotion, split, state
from distill_assets.lib.tasks import load_tasks
from resources.clock import utcnow
from resources.store import DuckDBStore

REPO = Path(__file__).resolve().parents[2]
OLD, NEW = "lora_adapter:old0000000000000", "lora_adapter:new0000000000000"
SUPPORT_EXPECTED = "please open the orders page and press the refund button"
BAD = "no idea, sorry"


def _prompts(cat: str, held: int, train: int, stem: str) -> tuple[list[str], list[str]]:
    """Prompts the hash split puts on each side (deterministic: the split is a hash of the prompt)."""
    frac = load_tasks().category(cat).heldout_failure_fraction
    h, t, i = [], [], 0
    while len(h) < held or len(t) < train:
        p = f"{stem} {i}?"
        (h if split.is_held_out(split.split_key(cat, p), frac) else t).append(p)
        i += 1
    return h[:held], t[:train]


@pytest.fixture
def failures(store):
    """support: 4 held out, 3 on the training side (2 seeded -> in_training, 1 still pending);
    math: 2 held out with a gold answer."""
    sh, st = _prompts("support", 4, 3, "My refund for order")
    mh, _ = _prompts("math", 2, 0, "What is six times seven, asked")
    # distinct expected answers: failures sharing one would be kept on one side of the split (contamination)
    recs = [{"category": "support", "input": p, "bad_output": BAD, "expected": f"order {k} {SUPPORT_EXPECTED}"}
            for k, p in enumerate(sh + st)]
    recs += [{"category": "math", "input": p, "bad_output": "I do not know", "expected": "42"} for p in mh]
    assert intake.add_failures(store, recs).inserted == 9
    stored = state.list_failures(store).set_index("input")["split"]
    assert [stored[p] for p in sh + mh] == ["heldout"] * 6 and [stored[p] for p in st] == ["train"] * 3
    ids = {r["input"]: intake.failure_id(r["category"], r["input"], r["bad_output"]) for r in recs}
    names = dict(zip(["h_pass1", "h_pass2", "h_fail", "h_unscored"], sh))
    names.update(zip(["t_seeded1", "t_seeded2", "t_pending"], st))
    names.update(zip(["m_right", "m_wrong"], mh))
    f = {k: {"id": ids[p], "input": p} for k, p in names.items()}
    # what seed_prompts does when it builds seeds from the training side
    assert state.mark_in_training(store, [f["t_seeded1"]["id"], f["t_seeded2"]["id"]]) == 2
    held = promotion.heldout_map(store).set_index("failure_id")
    for k in ("h_pass1", "h_pass2", "h_fail", "h_unscored", "m_right", "m_wrong"):
        f[k]["example_id"] = held.loc[f[k]["id"], "example_id"]
    return f


def _result(version, example_id, source, score, response, category="support"):
    return {"adapter_version": version, "variant": MERGED, "example_id": example_id, "source": source,
            "category": category, "score": score, "task_status": "scored", "response": response,
            "prompt": "p", "run_id": "r", "created_at": utcnow()}


def _old_promoted(store, f, heldout_scores: dict | None = None):
    """The model serving now: promoted a day ago, evaluated on the standard eval set (and maybe on some held-out
    failures, by an earlier eval)."""
    with store.connect() as conn:
        conn.execute("INSERT INTO model_versions (adapter_version, promoted, reasons, decided_at) VALUES (?, true, "
                     "'[]', ?)", [OLD, utcnow() - timedelta(days=1)])
    rows = [_result(OLD, e, "eval", 0.5, "old answer") for e in ("e1", "e2", "e3")]
    for k, s in (heldout_scores or {}).items():
        math = k.startswith("m_")  # a math failure's eval row is scored against the gold "42"
        rows.append(_result(OLD, f[k]["example_id"], "production_heldout", s,
                            "Therefore, the answer is: 42" if math else "old answer", "math" if math else "support"))
    store.insert_df("eval_results", pd.DataFrame(rows))


def _candidate_rows(f, eval_score=0.6):
    rows = [_result(NEW, e, "eval", eval_score, "new answer") for e in ("e1", "e2", "e3")]
    for k, s in (("h_pass1", 0.9), ("h_pass2", 0.6), ("h_fail", 0.2)):  # h_unscored: not in this eval
        rows.append(_result(NEW, f[k]["example_id"], "production_heldout", s, "new answer"))
    # as eval_report scores them: final answer against the gold "42" (eval_set's `reference` for math failures)
    rows.append(_result(NEW, f["m_right"]["example_id"], "production_heldout", 1.0,
                        "6 times 7 is 42. Therefore, the answer is: 42", "math"))
    rows.append(_result(NEW, f["m_wrong"]["example_id"], "production_heldout", 0.0,
                        "6 times 7 is 41. Therefore, the answer is: 41", "math"))
    return pd.DataFrame(rows)


def _eval_report_standin(results: pd.DataFrame, win_rate_vs_base: float):
    """What eval_report leaves behind for the candidate: eval_results, eval_summary, its adapter_version."""

    @dg.asset(name="eval_report", group_name="evaluation")
    def eval_report(store: DuckDBStore) -> dg.MaterializeResult:
        summary = [{"adapter_version": NEW, "variant": MERGED, "category": OVERALL, "win_rate_vs_base": win_rate_vs_base,
                    "transfer_ratio": 1.0, "created_at": utcnow()}]
        summary += [{"adapter_version": NEW, "variant": MERGED, "category": c, "win_rate_vs_base": win_rate_vs_base,
                     "transfer_ratio": 1.0, "created_at": utcnow()} for c in load_tasks().names]
        with store.connect():
            store.replace_rows("eval_results", results, "adapter_version = ?", [NEW])
            store.replace_rows("eval_summary", pd.DataFrame(summary), "adapter_version = ?", [NEW])
        return dg.MaterializeResult(metadata={"adapter_version": NEW})

    return eval_report


def _run(resources, results, win_rate_vs_base=0.8, severity="WARN", raise_on_error=True, **resolution_cfg):
    cfg = {"ops": {"failure_resolution": {"config": resolution_cfg}}} if resolution_cfg else {}
    cfg.setdefault("ops", {})
    cfg["ops"]["eval_report_eval_gate"] = {"config": {"severity": severity}}
    return dg.materialize([_eval_report_standin(results, win_rate_vs_base), *build_eval_report_checks(),
                           failure_resolution],
                          resources=resources, run_config=cfg, raise_on_error=raise_on_error)


def _statuses(store, f) -> dict:
    df = state.list_failures(store).set_index("failure_id")
    # a NULL resolved_by reads back as NaN with pandas 3: None either way
    return {k: (df.loc[v["id"], "status"], None if pd.isna(df.loc[v["id"], "resolved_by"]) else
                df.loc[v["id"], "resolved_by"]) for k, v in f.items()}


UNCHANGED = {"h_pass1": "held_out", "h_pass2": "held_out", "h_fail": "held_out", "h_unscored": "held_out",
             "m_right": "held_out", "m_wrong": "held_out", "t_seeded1": "in_training", "t_seeded2": "in_training",
             "t_pending": "pending"}


def _resolution_md(res) -> dict:
    mats = {m.materialization.asset_key.to_user_string(): m.materialization.metadata
            for m in res.get_asset_materialization_events()}
    return mats["failure_resolution"]


def test_promoted_model_resolves_exactly_the_heldout_failures_it_passes(store, duck_resources, failures):
    f = failures
    _old_promoted(store, f, heldout_scores={"h_fail": 0.3})
    res = _run(duck_resources, _candidate_rows(f))
    assert res.success
    checks = {e.asset_check_key.name: e for e in res.get_asset_check_evaluations()}
    assert checks["eval_gate"].passed

    got = _statuses(store, f)
    want = {**UNCHANGED, "h_pass1": "resolved", "h_pass2": "resolved", "m_right": "resolved"}
    assert {k: s for k, (s, _) in got.items()} == want
    assert {k for k, (_, by) in got.items() if by is not None} == {"h_pass1", "h_pass2", "m_right"}
    assert {by for _, by in got.values() if by is not None} == {NEW}

    d = store.query_df("SELECT * FROM promotion_decisions").iloc[0]
    assert (d["adapter_version"], d["baseline_version"], bool(d["gate_promoted"]), bool(d["promoted"])) == \
        (NEW, OLD, True, True)
    # held-out: the 5 failures the candidate was evaluated on; the old model's score is its own eval result for
    # h_fail (0.3) and what it answered in production for the others (0.0)
    assert d["heldout_n"] == 5
    assert d["heldout_candidate"] == pytest.approx((0.9 + 0.6 + 0.2 + 1.0 + 0.0) / 5)
    assert d["heldout_baseline"] == pytest.approx(0.3 / 5)
    assert (d["eval_n"], d["eval_candidate"], d["eval_baseline"]) == (3, pytest.approx(0.6), pytest.approx(0.5))
    assert int(d["resolved"]) == 3 and json.loads(d["reasons"]) == []
    mv = store.query_df("SELECT adapter_version, promoted FROM model_versions").set_index("adapter_version")
    assert bool(mv.loc[NEW, "promoted"]) and bool(mv.loc[OLD, "promoted"])
    assert promotion.promoted_baseline(store, "anything else") == NEW  # the newest promoted model serves

    md = _resolution_md(res)
    assert md["promoted"].value is True and md["resolved"].value == 3
    assert md["failure_status"].value == {"resolved": 3, "held_out": 3, "in_training": 2, "pending": 1}
    # no merged_model artifact: in_training failures cannot be answered, and say why
    assert md["in_training_note"].value.startswith("skipped: no merged model")
    table = md["comparison"].value
    assert "| held-out production failures | 5 | 0.540 | 0.060 |" in table
    assert "| standard eval set | 3 | 0.600 | 0.500 |" in table and "**promoted**" in table


@pytest.mark.parametrize("case", ["gate_failed", "worse_on_eval_set", "worse_on_heldout"])
def test_a_model_that_is_not_promoted_resolves_nothing(store, duck_resources, failures, case):
    f = failures
    heldout_old = {k: 1.0 for k in ("h_pass1", "h_pass2", "h_fail", "m_right", "m_wrong")} \
        if case == "worse_on_heldout" else {}
    _old_promoted(store, f, heldout_scores=heldout_old)
    res = _run(duck_resources, _candidate_rows(f, eval_score=0.3 if case == "worse_on_eval_set" else 0.6),
               win_rate_vs_base=0.4 if case == "gate_failed" else 0.8)
    assert res.success  # WARN gate: failure_resolution still runs and records why nothing was resolved
    assert {k: s for k, (s, _) in _statuses(store, f).items()} == UNCHANGED
    assert all(by is None for _, by in _statuses(store, f).values())

    d = store.query_df("SELECT * FROM promotion_decisions").iloc[0]
    reasons = json.loads(d["reasons"])
    assert not bool(d["promoted"]) and int(d["resolved"]) == 0
    mv = store.query_df("SELECT adapter_version, promoted, reasons FROM model_versions").set_index("adapter_version")
    assert not bool(mv.loc[NEW, "promoted"])
    assert promotion.promoted_baseline(store, "anything else") == OLD  # the old model keeps serving
    if case == "gate_failed":
        assert not bool(d["gate_promoted"]) and reasons == ["eval_gate did not promote it"]
    elif case == "worse_on_eval_set":
        assert bool(d["gate_promoted"]) and len(reasons) == 1
        assert reasons[0].startswith("worse than the promoted model on the standard eval set: 0.300 < 0.500")
        assert reasons[0] in json.loads(mv.loc[NEW, "reasons"])  # the flip says why
    else:
        assert bool(d["gate_promoted"]) and len(reasons) == 1
        assert reasons[0].startswith("worse than the promoted model on held-out production failures: 0.540 < 1.000")
    assert _resolution_md(res)["resolved"].value == 0


def test_blocking_error_gate_stops_failure_resolution(store, duck_resources, failures):
    f = failures
    _old_promoted(store, f)
    res = _run(duck_resources, _candidate_rows(f), win_rate_vs_base=0.4, severity="ERROR", raise_on_error=False)
    assert not res.success
    done = {m.materialization.asset_key.to_user_string() for m in res.get_asset_materialization_events()}
    assert done == {"eval_report"}
    assert {k: s for k, (s, _) in _statuses(store, f).items()} == UNCHANGED
    assert store.query_df("SELECT count(*) AS n FROM promotion_decisions")["n"][0] == 0
    # the check only reports: with failure_resolution stopped, nothing records the candidate's promotion flag
    assert store.query_df("SELECT * FROM model_versions WHERE adapter_version = ?", [NEW]).empty


def test_in_training_failures_are_not_answered_by_another_adapters_merged_model(store, duck_resources, failures,
                                                                               tmp_path):
    f = failures
    _old_promoted(store, f)
    model_dir = tmp_path / "merged"
    model_dir.mkdir()
    ledger.register_artifact(store, artifact_id="merged_model:stale", asset="merged_model", kind="hf_model",
                            path=str(model_dir), sha256="0" * 64, bytes=1, parent_artifact_id=OLD,
                            dataset_version="v", run_id="r", metadata={})
    res = _run(duck_resources, _candidate_rows(f))
    note = _resolution_md(res)["in_training_note"].value
    assert note.startswith(f"skipped: no merged model of the promoted adapter {NEW}")  # not {OLD}'s merge
    got = _statuses(store, f)
    assert (got["t_seeded1"][0], got["t_seeded2"][0], got["t_pending"][0]) == ("in_training", "in_training",
                                                                              "pending")
    assert got["h_pass1"][0] == "resolved"  # the held-out side does not need the weights


def _distill(args, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DISTILL_HOME": str(home), "DAGSTER_HOME": str(home / "dagster_home")}
    env.pop("TEACHER_BASE_URL", None)
    return subprocess.run([sys.executable, "-m", "distill_assets.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_lists_the_statuses_after_resolution(store, duck_resources, failures, distill_home):
    f = failures
    _old_promoted(store, f)
    assert _run(duck_resources, _candidate_rows(f)).success

    proc = _distill(["failures", "list", "--json"], distill_home)
    assert proc.returncode == 0, proc.stderr
    listed = {r["failure_id"]: r for r in json.loads(proc.stdout)}
    want = {**UNCHANGED, "h_pass1": "resolved", "h_pass2": "resolved", "m_right": "resolved"}
    assert {k: listed[v["id"]]["status"] for k, v in f.items()} == want
    assert {k for k, v in f.items() if listed[v["id"]]["resolved_by"] == NEW} == {"h_pass1", "h_pass2", "m_right"}

    proc = _distill(["failures", "list", "--status", "resolved"], distill_home)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "3 failure(s)"
    assert sorted(ln.split()[0] for ln in lines[1:-1]) == sorted(f[k]["id"] for k in ("h_pass1", "h_pass2",
                                                                                      "m_right"))
    assert all(ln.split()[2] == "resolved" for ln in lines[1:-1])

    proc = _distill(["failures", "list", "--status", "in_training", "--category", "support"], distill_home)
    assert proc.returncode == 0, proc.stderr
    rows = [ln.split() for ln in proc.stdout.strip().splitlines()[1:-1]]
    assert sorted(r[0] for r in rows) == sorted([f["t_seeded1"]["id"], f["t_seeded2"]["id"]])
    assert {(r[1], r[2]) for r in rows} == {("support", "in_training")}


@pytest.fixture(scope="module")
def tiny_merged(tmp_path_factory):
    from tests.lib.training.tiny_model import session_dirs

    return session_dirs(tmp_path_factory)["base"]  # a complete HF model dir with tokenizer and chat template


def _answer(model_dir, category: str, prompt: str, max_new_tokens: int) -> str:
    """The tiny model's greedy answer, through the same variant runner failure_resolution uses."""
    from distill_assets.lib.evaluation import variants as vr

    cats = {c.name: c for c in load_tasks().categories}
    spec = vr.VariantSpec(MERGED, "hf", str(model_dir), "merged_model:tiny")
    ev = pd.DataFrame({"eval_id": ["x"], "category": [category], "prompt": [prompt]})
    gens, _ = vr.run_variants([spec], vr.build_items(ev, cats), max_new_tokens=max_new_tokens,
                              teacher_complete=None, teacher_price={}, usd_per_hour=0.0, threads=2)
    return str(gens.iloc[0]["response"]).strip()


@pytest.mark.e2e  # real weights: the promoted adapter's merged model answers the in_training failures
def test_promoted_merged_model_answers_and_resolves_in_training_failures(store, duck_resources, tiny_merged):
    _, train = _prompts("support", 0, 3, "My card was charged twice, order")
    fixed, still, untrained = train
    answer = _answer(tiny_merged, "support", fixed, 12)
    assert answer  # a random-init model still says something; it is what `fixed` expects
    recs = [{"category": "support", "input": fixed, "bad_output": BAD, "expected": answer},
            {"category": "support", "input": still, "bad_output": BAD, "expected": SUPPORT_EXPECTED},
            {"category": "support", "input": untrained, "bad_output": BAD, "expected": answer}]
    intake.add_failures(store, recs)
    ids = [intake.failure_id("support", r["input"], BAD) for r in recs]
    assert set(state.list_failures(store)["split"]) == {"train"}
    assert state.mark_in_training(store, ids[:2]) == 2
    f = {}
    _old_promoted(store, f)
    ledger.register_artifact(store, artifact_id="merged_model:tiny", asset="merged_model", kind="hf_model",
                            path=str(tiny_merged), sha256="1" * 64, bytes=1, parent_artifact_id=NEW,
                            dataset_version="v", run_id="r", metadata={})
    res = _run(duck_resources, pd.DataFrame([_result(NEW, e, "eval", 0.6, "x") for e in ("e1", "e2", "e3")]),
               max_new_tokens=12)
    assert res.success
    df = state.list_failures(store).set_index("failure_id")
    assert [df.loc[i, "status"] for i in ids] == ["resolved", "in_training", "pending"]
    assert df.loc[ids[0], "resolved_by"] == NEW and pd.isna(df.loc[ids[1], "resolved_by"])
    md = _resolution_md(res)
    assert md["resolved"].value == 1 and md["in_training_note"].value == ""
    assert int(store.query_df("SELECT resolved FROM promotion_decisions").iloc[0]["resolved"]) == 1
