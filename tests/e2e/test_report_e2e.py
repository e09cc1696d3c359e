"""End to end: eval_report in dg.materialize with stand-in upstream assets, the fake OpenAI server as teacher and
judge, and a tiny random-init 2-layer Llama (SmolLM2 tokenizer) as base and merged student. The HTML report's
numbers must equal what went to eval_results."""

import json
import re
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from distill_assets.defs.evaluation import eval_gate, eval_report
from distill_assets.lib import ledger
from distill_assets.lib.ledger import open_io_manager, open_store
from distill_assets.lib.records import load_eval_file
from distill_assets.lib.tasks import load_tasks
from resources.llm import LLMResource
from resources.store import DuckDBStore
from tests.fakes.openai_server import FakeOpenAIServer

pytestmark = pytest.mark.e2e  # a real report from a small end-to-end run, in CI

MATH = [("What is 2 + 3?", "5", "easy"), ("What is 6 * 7?", "42", "medium"), ("What is 10 - 4?", "6", "hard")]
CLASSIFY = [("Classify: my card was charged twice", "billing", "easy"),
            ("Classify: where is my parcel?", "shipping", "medium"),
            ("Classify: refund is missing", "billing", "hard")]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from distill_assets.lib.settings import embedded_teacher_gguf
    from distill_assets.lib.tokenizer import gguf_tokenizer

    root = tmp_path_factory.mktemp("models")
    tok = gguf_tokenizer(embedded_teacher_gguf(), root / "tokenizer")
    out = {}
    for name, seed in (("base", 0), ("merged", 1)):
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
        d = root / name
        LlamaForCausalLM(cfg).save_pretrained(d)
        tok.save_pretrained(d)
        out[name] = d
    return out


def _write_task(tmp: Path) -> Path:
    for cat, rows in (("maths", MATH), ("intent", CLASSIFY)):
        (tmp / f"{cat}_seeds.jsonl").write_text(json.dumps({"prompt": f"seed for {cat}"}) + "\n")
        with open(tmp / f"{cat}_eval.jsonl", "w") as f:
            for p, ref, diff in rows:
                f.write(json.dumps({"prompt": p, "reference": ref, "difficulty": diff,
                                    "reference_response": f"The answer is {ref}."}) + "\n")
    path = tmp / "tasks.yaml"
    path.write_text(f"""
categories:
  - name: maths
    description: arithmetic
    system_prompt: Solve it.
    seeds: {tmp}/maths_seeds.jsonl
    eval: {tmp}/maths_eval.jsonl
    verify: math
    complexity: complex
    eval_target_transfer: 0.75
  - name: intent
    description: intents
    system_prompt: Classify the intent.
    seeds: {tmp}/intent_seeds.jsonl
    eval: {tmp}/intent_eval.jsonl
    verify: label
    labels: [billing, shipping]
    complexity: simple
    eval_target_transfer: 0.95
""")
    return path


def _judge(text):
    """Prefers the one response that states an answer (the teacher's, vs a tiny random student); between two
    that do not (merged vs base) it always says A: pure position bias, a judge with no signal."""
    a = text.split("Response A:")[1].split("Response B:")[0]
    b = text.split("Response B:")[1].split("Which response is better?")[0]
    answers = [("The answer is" in r or "Label:" in r) for r in (a, b)]
    if answers == [False, True]:
        return "B states the answer.\nWinner: B"
    return "Response A is more direct.\nWinner: A"


def _responder(body):
    text = body["messages"][-1]["content"]
    if text.startswith("Compare these two responses"):
        return _judge(text)
    for p, ref, _ in MATH + CLASSIFY:
        if p in text:
            return f"The answer is {ref}." if ref.isdigit() else f"Label: {ref}"
    return "I do not know."


def test_eval_report_end_to_end(tmp_path, monkeypatch, tiny_models):
    monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DISTILL_TASKS", str(_write_task(tmp_path)))
    tasks = load_tasks()
    db = str(tmp_path / "d.duckdb")
    store = open_store(db)
    parts = dg.StaticPartitionsDefinition(tasks.names)

    @dg.asset(name="eval_set", partitions_def=parts, metadata={"partition_expr": "category"})
    def eval_set_standin(context) -> pd.DataFrame:
        return load_eval_file(tasks.category(context.partition_key).eval, tasks.category(context.partition_key))

    def artifact_asset(name, path=None, skipped=None):
        @dg.asset(name=name)
        def _a(context, store: DuckDBStore) -> dg.MaterializeResult:
            artifact_id = f"{name}-{context.run.run_id[:6]}"
            if path is not None:
                ledger.register_artifact(store, artifact_id=artifact_id, asset=name, kind="hf_model",
                                        path=str(path), sha256="x", bytes=1, parent_artifact_id=f"adapter-{context.run.run_id[:6]}",
                                        dataset_version="d1", run_id=context.run.run_id, metadata={})
            return dg.MaterializeResult(metadata={"status": skipped} if skipped else {"artifact_id": artifact_id})
        return _a

    upstream = [artifact_asset("student_base_model", tiny_models["base"]),
                artifact_asset("merged_model", tiny_models["merged"]),
                artifact_asset("gguf_export", skipped="skipped: stand-in, no GGUF files"),
                artifact_asset("awq_export", skipped="skipped: needs CUDA")]
    with FakeOpenAIServer(responder=_responder) as server:
        llm = dict(base_url=server.base_url, model="fake", max_retries=1, price_prompt_per_1m=1.0,
                   price_completion_per_1m=2.0)
        resources = {"io_manager": open_io_manager(db), "store": store,
                     "teacher": LLMResource(role="teacher", **llm), "judge": LLMResource(role="judge", **llm)}
        instance = dg.DagsterInstance.ephemeral()
        for c in tasks.names:
            assert dg.materialize([eval_set_standin], partition_key=c, resources=resources, instance=instance).success
        run_config = {"ops": {"eval_report": {"config": {"max_new_tokens": 8, "n_bootstrap": 200}}}}
        everything = [eval_set_standin, *upstream, eval_report, eval_gate]
        sel = [a.key for a in upstream] + [eval_report.key]
        res = dg.materialize(everything, selection=dg.AssetSelection.assets(*sel) | dg.AssetSelection.checks(eval_gate),
                             resources=resources, run_config=run_config, instance=instance)
        assert res.success
        calls_after_first = server.total
        md = res.asset_materializations_for_node("eval_report")[0].metadata
        report_path = Path(md["report_path"].value)
        assert report_path.exists() and str(report_path).startswith(str(tmp_path / "home" / "reports"))

        results = store.query_df("SELECT * FROM eval_results")
        assert set(results["variant"]) == {"teacher", "base_student", "merged_student"}
        assert len(results) == 3 * 6
        teacher = results[results["variant"] == "teacher"]
        assert (teacher["score"] == 1.0).all()
        # vs the teacher the judge is consistent (the teacher wins every pair); vs the base it only follows the
        # position: every pair a tie, never consistent
        judged = results[results["judge_verdict"].notna()]
        assert (judged["judge_verdict"] == "loss").all() and judged["judge_consistent"].all()
        vs_base = results[results["judge_vs_base_verdict"].notna()]
        assert (vs_base["judge_vs_base_score"] == 0.5).all() and not vs_base["judge_vs_base_consistent"].any()

        html_text = report_path.read_text()
        payload = json.loads(re.search(r"<script type='application/json' id='eval-summary'>(.*?)</script>",
                                       html_text, re.S).group(1))
        summary = pd.DataFrame(payload["summary"])
        for rec in summary[summary["status"] == "ok"].to_dict("records"):
            rows = results[results["variant"] == rec["variant"]]
            if rec["category"] != "__all__":
                rows = rows[rows["category"] == rec["category"]]
            assert rec["n"] == len(rows)
            assert rec["task_score"] == pytest.approx(rows["score"].mean())
            valid = rows[rows["judge_verdict"].isin(["win", "tie", "loss"])]
            if len(valid):
                assert rec["win_rate_vs_teacher"] == pytest.approx(valid["judge_score"].mean())
        merged = summary[(summary["variant"] == "merged_student") & (summary["category"] == "__all__")].iloc[0]
        m_rows = results[results["variant"] == "merged_student"]
        assert merged["judge_signal"] == "ok" and merged["win_rate_vs_teacher"] == 0.0
        # the judge without signal vs the base has no win rate and no CI, only the reason
        assert merged["base_judge_signal"] == "no signal (consistency 0%)"
        assert merged["win_rate_vs_base"] is None and merged["base_win_ci_low"] is None
        assert merged["transfer_ratio"] == pytest.approx(m_rows["score"].mean() / teacher["score"].mean())
        # the visible headline numbers are the same
        assert f"{100 * merged['win_rate_vs_teacher']:.1f}%" in re.search(r"id='win-vs-teacher'>([^<]*)<", html_text).group(1)
        assert re.search(r"id='win-vs-base'>([^<]*)<", html_text).group(1) == \
            "judge has no signal here (consistency 0%)"
        assert md["win_rate_vs_base"].value == "judge has no signal here (consistency 0%)"
        # the report leads with the paired change vs the base, per category, as stored in eval_summary
        assert re.findall(r"<h2>(.*?)</h2>", html_text)[0] == "What changed: merged student vs base student"
        m_db = store.query_df("SELECT * FROM eval_summary WHERE variant = 'merged_student' AND category <> '__all__'")
        for r in m_db.to_dict("records"):
            pairs = results[results["category"] == r["category"]].pivot(index="example_id", columns="variant",
                                                                       values="score")
            assert r["n_paired"] == 3
            assert r["delta_vs_base"] == pytest.approx((pairs["merged_student"] - pairs["base_student"]).mean())
            assert r["delta_ci_low"] <= r["delta_vs_base"] <= r["delta_ci_high"]
            assert r["change"] in ("improved", "regressed", "no measurable change")
            assert f"<td>{r['category']}</td>" in html_text and f"| {r['category']} " in md["change_vs_base"].value
        improved = sorted(m_db[m_db["change"] == "improved"]["category"])
        assert md["improved_categories"].value == improved
        assert (("No category improved" in md["change_vs_base"].value) == (not improved))
        assert "awq" in html_text and "skipped: needs CUDA" in html_text
        assert "Iteration advice" in html_text and "<img src='data:image/png;base64," in html_text
        # failure analysis: every failed merged-student example is listed with its category
        failed = m_rows[m_rows["failure_category"].notna()]
        assert html_text.count("class='fail'") == int(results["failure_category"].notna().sum())
        assert set(failed["failure_category"]) <= {"truncated", "too_short", "format", "wrong_answer", "no_response"}

        summary_db = store.query_df("SELECT * FROM eval_summary")
        awq = summary_db[summary_db["variant"] == "awq"].iloc[0]
        assert awq["status"] == "skipped" and awq["reason"] == "skipped: needs CUDA"
        eff = summary_db[(summary_db["variant"] == "merged_student") & (summary_db["category"] == "__all__")].iloc[0]
        assert eff["tokens_per_s"] > 0 and eff["size_bytes"] > 0 and eff["usd_per_1m_tokens"] > 0
        teacher_cost = summary_db[(summary_db["variant"] == "teacher") & (summary_db["category"] == "__all__")]
        assert teacher_cost.iloc[0]["usd_per_1m_tokens"] > 0  # from the ledger's priced calls

        # the gate: the judge without signal is not used (and fails nothing); the random students miss their
        # transfer targets -> not promoted, WARN by default
        check = res.get_asset_check_evaluations()[0]
        assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
        assert check.metadata["promoted"].value is False
        assert check.metadata["judge_vs_base"].value == "judge has no signal here (consistency 0%)"
        assert "criterion skipped" in check.metadata["notes"].value
        assert "win rate vs base" not in check.metadata["reasons"].value
        assert check.metadata["adapter_version"].value == md["adapter_version"].value
        # the check only reads: model_versions is written by failure_resolution, not by eval_gate
        assert store.query_df("SELECT * FROM model_versions").empty

        # a second adapter version: trend against the previous one; every teacher/judge call answered from cache
        res2 = dg.materialize(everything, selection=sel, resources=resources, run_config=run_config,
                              instance=instance)
        assert res2.success
        assert server.total == calls_after_first
        assert server.repeated_answers() == 0
        versions = store.query_df("SELECT DISTINCT adapter_version FROM eval_summary")
        assert len(versions) == 2
        html2 = Path(res2.asset_materializations_for_node("eval_report")[0].metadata["report_path"].value).read_text()
        assert md["adapter_version"].value in html2  # the previous version appears in the trend table
