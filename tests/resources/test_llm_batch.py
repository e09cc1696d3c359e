"""Batch mode of the LLM session against the fake Batch API (loopback only): a generation run end to end at the
batch price, polling with progress, per-request failures and an expired batch retried online, limits, the
budget, and kill -9 while polling followed by a rerun that resumes the same batch."""

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from distill_assets.lib.generation.plan import generate
from distill_assets.lib.ids import content_hash
from distill_assets.lib.ledger import open_store
from distill_assets.lib.tasks import Category
from resources.llm import ChatRequest, LLMResource, LLMSession
from tests.fakes.batch_server import FakeBatchServer, start_server_process

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "distill_assets" / "demo"
PRICES = {"price_prompt_per_1m": 3.0, "price_completion_per_1m": 7.0}


def llm(srv, **kw) -> LLMResource:
    base = dict(base_url=srv.base_url, model="fake-teacher", mode="batch", batch_poll_interval_s=0.02,
                batch_max_poll_interval_s=0.05, request_timeout_s=5, backoff_initial_s=0.01, backoff_max_s=0.05,
                **PRICES)
    return LLMResource(**{**base, **kw})


def reqs(n: int) -> list[ChatRequest]:
    return [ChatRequest([{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"question {i}"}],
                        temperature=0.0, max_tokens=32) for i in range(n)]


def online_price(row) -> float:
    return (row["prompt_tokens"] * PRICES["price_prompt_per_1m"]
            + row["completion_tokens"] * PRICES["price_completion_per_1m"]) / 1e6


def calls(store) -> pd.DataFrame:
    return store.query_df("SELECT * FROM teacher_calls").set_index("call_key")


def test_generation_phases_in_batch_mode_end_to_end(store):
    cat = Category(name="support", description="customer support", system_prompt="Be brief.",
                   seeds=DEMO / "seeds" / "support.jsonl", eval=DEMO / "eval" / "support.jsonl",
                   samples_per_prompt=1, methods={"response": 4, "evol_instruct": {"count": 2, "rounds": 1}},
                   generation={"mode": "batch"})
    seeds = pd.DataFrame([{"seed_id": f"s{i}", "prompt": f"How do I get a refund for order {i}?",
                           "difficulty": "easy", "reference": None, "tests": "[]", "entry_point": None,
                           "source": "seed"} for i in range(4)])
    def responder(body):  # distinct per request, so the two evolutions differ
        return f"Please explain refund rule {content_hash(json.dumps(body['messages']))[:8]} in detail."

    with FakeBatchServer(polls_per_stage=2, responder=responder) as srv:
        # the resource says online; the task's generation.mode wins for this category
        with llm(srv, mode="online").session(store, run_id="r1") as s:
            df, stats = generate(cat, seeds, s)
        assert stats.phases == 2 and stats.failed == 0
        assert srv.stats["batches_created"] == 2 and srv.stats["files_created"] == 2  # one job per phase
        assert srv.stats["chat_calls"] == 0
        # phase 1: 4 answers + 2 evolutions; phase 2: the 2 evolved instructions answered
        assert stats.calls == 8 and len(df) == 6 and set(df["method"]) == {"response", "evol_instruct"}
        first = json.loads(srv.batches[sorted(srv.batches, key=lambda b: srv.batches[b]["created_at"])[0]]["_items"])
        ledger = calls(store)
        assert len(ledger) == 8 and set(ledger["status"]) == {"ok"}
        assert {i["custom_id"] for i in first} <= set(ledger.index)
        for _, row in ledger.iterrows():  # the batch price: half the online price
            assert row["cost_usd"] == pytest.approx(online_price(row) * 0.5) and row["cost_usd"] > 0
        assert set(df["call_key"]) <= set(ledger.index)
        assert df.set_index("call_key")["response"].to_dict() == ledger.loc[df["call_key"], "response"].to_dict()
        req = json.loads(ledger.loc[df["call_key"].iloc[0], "request_json"])
        assert req["messages"][-1]["role"] == "user" and req["max_tokens"] == cat.max_tokens
        batches = store.query_df("SELECT * FROM teacher_batches ORDER BY created_at")
        assert list(batches["status"]) == ["completed", "completed"] and batches["completed_at"].notna().all()
        assert list(batches["category"]) == ["support"] * 2 and list(batches["run_id"]) == ["r1"] * 2
        assert sorted(json.loads(batches["call_keys"][0])) == sorted(i["custom_id"] for i in first)
        assert json.loads(batches["counts"][0])["answered"] == 6
        # the same run again: every call is cached, nothing is submitted
        with llm(srv, mode="online").session(store) as s:
            again, stats2 = generate(cat, seeds, s)
        assert stats2.cached == 8 and srv.stats["batches_created"] == 2
        assert sorted(again["generation_id"]) == sorted(df["generation_id"])


def test_polling_delays_log_counts_and_eta(store, caplog):
    with FakeBatchServer(polls_per_stage=6) as srv, caplog.at_level(logging.INFO, logger="distill.llm"):
        with llm(srv).session(store) as s:
            res = s.complete(reqs(10), label="phase")
        assert srv.stats["polls"] >= 18 and all(r.ok for r in res)
    lines = [r.getMessage() for r in caplog.records if "phase: batch" in r.getMessage()]
    assert any(" validating: 0/10 done" in l for l in lines) and any(" completed: 10/10 done" in l for l in lines)
    assert any("in_progress" in l and "ETA" in l for l in lines)
    assert any("10 answered at the batch price, 0 failed, 0 not run" in l for l in lines)


def test_partial_failures_are_retried_online_at_the_online_price(store):
    with FakeBatchServer() as srv:
        with llm(srv).session(store) as s:
            keys = [s.key(r) for r in reqs(8)]
            srv.fail = {keys[2]: "error", keys[5]: True}.get  # an error line and an HTTP 500 line
            res = s.complete(reqs(8))
        assert srv.stats["batches_created"] == 1 and srv.stats["chat_calls"] == 2
    assert [r.status for r in res] == ["ok"] * 8 and res[2].content == "echo: question 2"
    ledger = calls(store)
    for i, k in enumerate(keys):
        factor = 1.0 if i in (2, 5) else 0.5
        assert ledger.loc[k, "cost_usd"] == pytest.approx(online_price(ledger.loc[k]) * factor)
    (counts,) = store.query_df("SELECT counts FROM teacher_batches")["counts"]
    assert json.loads(counts)["failed_lines"] == 2


def test_expired_batch_keeps_its_answers_and_retries_the_rest_online(store):
    with FakeBatchServer(mode="expire", expire_fraction=0.4, shuffle_output=False) as srv:
        with llm(srv).session(store) as s:
            res = s.complete(reqs(10))
            keys = [s.key(r) for r in reqs(10)]
        assert srv.stats["batches_created"] == 1 and srv.stats["chat_calls"] == 6
    assert all(r.ok for r in res)
    ledger = calls(store)
    assert [ledger.loc[k, "cost_usd"] / online_price(ledger.loc[k]) for k in keys] == \
        pytest.approx([0.5] * 4 + [1.0] * 6)
    row = store.query_df("SELECT status, counts FROM teacher_batches")
    assert row["status"][0] == "expired" and json.loads(row["counts"][0])["not_run"] == 6


def test_a_phase_over_the_limits_is_split_into_several_jobs(store):
    with FakeBatchServer() as srv:
        with llm(srv, batch_max_requests=4).session(store) as s:
            res = s.complete(reqs(10))
        assert srv.stats["batches_created"] == 3 and all(r.ok for r in res)
        sizes = sorted(len(json.loads(b["_items"])) for b in srv.batches.values())
    assert sizes == [2, 4, 4]
    assert store.query_df("SELECT count(*) AS n FROM teacher_batches WHERE status = 'completed'")["n"][0] == 3


def test_requests_over_the_budget_are_not_submitted(store):
    # each request is estimated at (8 + 32 prompt+max tokens) at the batch price: room for five of them
    one = LLMResource(**PRICES).cost(8 + 2, 32, batch=True)  # "question i" is 10 chars -> 3 + 8 prompt tokens
    with FakeBatchServer() as srv:
        with llm(srv, max_budget_usd=one * 5.5).session(store) as s:
            res = s.complete(reqs(8))
        (batch,) = srv.batches.values()
    assert len(json.loads(batch["_items"])) == 5
    assert [r.status for r in res] == ["ok"] * 5 + ["budget_exceeded"] * 3 and "budget" in res[-1].error
    ledger = store.query_df("SELECT status, count(*) AS n, sum(cost_usd) AS usd FROM teacher_calls GROUP BY 1")
    assert ledger.set_index("status")["n"].to_dict() == {"ok": 5, "budget_exceeded": 3}
    assert ledger["usd"].sum() <= one * 5.5


def test_batch_mode_needs_an_http_endpoint(store):
    # as LLMResource.session builds it for the embedded llama.cpp server (whose loopback URL is never called)
    cfg = LLMResource(embedded_model_path="/packaged.gguf")
    s = LLMSession(cfg, store, base_url="http://127.0.0.1:9/v1", model="embedded", concurrency=1, run_id="",
                   logger=None)
    try:
        with pytest.raises(ValueError, match="batch mode needs an endpoint with the OpenAI Batch API "
                                             r"\(TEACHER_BASE_URL.*embedded llama.cpp server has none"):
            s.complete(reqs(1), mode="batch")
        with pytest.raises(ValueError, match="mode 'offline' must be online or batch"):
            s.complete(reqs(1), mode="offline")
    finally:
        s.close()


SESSION_SCRIPT = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.INFO)
    from distill_assets.lib.ledger import open_store
    from resources.llm import ChatRequest, LLMResource, LLMSession
    url, db = sys.argv[1], sys.argv[2]
    llm = LLMResource(base_url=url, model="fake-teacher", mode="batch", batch_poll_interval_s=0.02,
                      batch_max_poll_interval_s=0.05, price_prompt_per_1m=3.0, price_completion_per_1m=7.0)
    with llm.session(open_store(db), run_id=sys.argv[3]) as s:
        res = s.complete([ChatRequest([{"role": "user", "content": f"q{i}"}], max_tokens=16) for i in range(8)],
                         category="support", label="phase 1")
    assert all(r.ok for r in res), [r.error for r in res]
    print("finished", flush=True)
""")


def _fake(url: str, what: str) -> dict:
    data = b"" if what == "release" else None
    with urllib.request.urlopen(urllib.request.Request(url.removesuffix("/v1") + f"/_fake/{what}", data=data),
                                timeout=5) as r:
        return json.loads(r.read())


def test_kill_9_while_polling_then_rerun_resumes_the_same_batch(tmp_path):
    proc, url = start_server_process("--hold", "--state-file", str(tmp_path / "state.json"))
    db, script = tmp_path / "home" / "distill.duckdb", tmp_path / "session.py"
    script.write_text(SESSION_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        first = subprocess.Popen([sys.executable, str(script), url, str(db), "run-1"], cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _fake(url, "stats")["polls"] < 5 and first.poll() is None:
            time.sleep(0.02)
        assert first.poll() is None, first.stderr.read().decode()[-2000:]
        os.kill(first.pid, signal.SIGKILL)  # while it polls a held batch
        first.wait(10)
        assert first.returncode == -signal.SIGKILL and b"finished" not in first.stdout.read()
        store = open_store(str(db))
        (row,) = store.query_df("SELECT * FROM teacher_batches").to_dict("records")
        assert row["completed_at"] is pd.NaT or pd.isna(row["completed_at"])
        assert row["run_id"] == "run-1" and len(json.loads(row["call_keys"])) == 8
        assert store.query_df("SELECT count(*) AS n FROM teacher_calls")["n"][0] == 0
        _fake(url, "release")
        rerun = subprocess.run([sys.executable, str(script), url, str(db), "run-2"], cwd=ROOT, env=env,
                               capture_output=True, timeout=120)
        assert rerun.returncode == 0 and b"finished" in rerun.stdout, rerun.stderr.decode()[-2000:]
        assert f"resuming batch {row['batch_id']}".encode() in rerun.stderr
        stats = _fake(url, "stats")
        assert stats["files_created"] == 1 and stats["batches_created"] == 1 and stats["chat_calls"] == 0
    finally:
        proc.kill()
        proc.wait(5)
    ledger = calls(store)
    assert len(ledger) == 8 and set(ledger["status"]) == {"ok"} and set(ledger.index) == set(json.loads(row["call_keys"]))
    assert set(ledger["category"]) == {"support"}
    for _, r in ledger.iterrows():
        assert r["cost_usd"] == pytest.approx(online_price(r) * 0.5)
    done = store.query_df("SELECT status, completed_at FROM teacher_batches")
    assert list(done["status"]) == ["completed"] and done["completed_at"].notna().all()
