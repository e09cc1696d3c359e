"""The teacher resource against a real local HTTP server that injects faults."""

import logging
import time
from collections import Counter

import pytest

from resources.llm import ChatRequest, LLMResource
from resources.llm_http import _retry_after
from resources.llm_journal import replay_journals
from tests.fakes.openai_server import FakeOpenAIServer


def _reqs(n, prefix="q"):
    return [ChatRequest(messages=[{"role": "user", "content": f"{prefix}{i}"}], max_tokens=32) for i in range(n)]


def _llm(srv, **kw):
    base = dict(base_url=srv.base_url, model="fake", request_timeout_s=1.0, backoff_initial_s=0.02,
                backoff_max_s=0.2, max_retries=10)
    return LLMResource(**{**base, **kw})


def test_every_row_arrives_at_20_percent_faults(store):
    with FakeOpenAIServer(fault_rate=0.2, hang_s=3, seed=7) as srv:
        with _llm(srv).session(store) as s:
            res = s.complete(_reqs(300))
    assert Counter(r.status for r in res) == {"ok": 300}
    assert set(srv.faults_sent) == {"429", "500", "hang", "reset", "malformed", "empty"}
    assert all(r.content and r.content.strip() for r in res)
    assert srv.repeated_answers() == 0
    ledger = store.query_df("SELECT status, count(*) AS n FROM teacher_calls GROUP BY 1")
    assert ledger.set_index("status")["n"].to_dict() == {"ok": 300}


def test_empty_and_malformed_are_recorded_never_content(store):
    with FakeOpenAIServer(fault_rate=1.0, faults=("empty", "malformed")) as srv:
        with _llm(srv, max_retries=2).session(store) as s:
            res = s.complete(_reqs(6))
    assert {r.status for r in res} <= {"empty", "malformed"}
    assert all(r.content is None and "gave up after 3 attempt(s)" in r.error for r in res)
    rows = store.query_df("SELECT status, response FROM teacher_calls")
    assert rows["response"].isna().all() and set(rows["status"]) <= {"empty", "malformed"}


def test_failed_calls_are_retried_on_rerun_and_ok_ones_are_not(store):
    with FakeOpenAIServer(fault_rate=1.0, faults=("500",)) as srv:
        with _llm(srv, max_retries=1).session(store) as s:
            assert not any(r.ok for r in s.complete(_reqs(4)))
        srv.fault_rate = 0.0
        with _llm(srv).session(store) as s:
            assert all(r.ok and not r.cached for r in s.complete(_reqs(4)))
        before = srv.total
        with _llm(srv).session(store) as s:
            assert all(r.cached for r in s.complete(_reqs(4)))
        assert srv.total == before  # zero calls for keys already answered


def test_retry_after_is_honoured(store):
    with FakeOpenAIServer(fault_rate=1.0, faults=("429",), retry_after_s=0.4) as srv:
        with _llm(srv, max_retries=1).session(store) as s:
            t0 = time.monotonic()
            res = s.complete(_reqs(1))
            elapsed = time.monotonic() - t0
    assert res[0].status == "error" and "HTTP 429" in res[0].error
    assert elapsed >= 0.4  # waited for Retry-After, not the 0.02 s backoff
    assert _retry_after({"retry-after": "3"}) == 3.0
    assert _retry_after({"retry-after-ms": "250"}) == 0.25
    assert _retry_after({}) is None


def test_non_retryable_status_fails_fast(store):
    with FakeOpenAIServer() as srv:
        llm = LLMResource(base_url=srv.base_url.replace("/v1", "/nope"), model="fake", max_retries=5)
        with llm.session(store) as s:
            res = s.complete(_reqs(1))
    assert res[0].status == "error" and res[0].attempts == 1 and "HTTP 404" in res[0].error


def test_budget_stops_cleanly(store):
    with FakeOpenAIServer() as srv:
        llm = _llm(srv, price_prompt_per_1m=1000.0, price_completion_per_1m=1000.0, max_budget_usd=0.5,
                   max_concurrency=1)
        with llm.session(store) as s:
            res = s.complete(_reqs(200))
            assert s.budget_hit and "TEACHER_MAX_BUDGET_USD" in s.budget_hit
    statuses = Counter(r.status for r in res)
    assert statuses["ok"] > 0 and statuses["budget_exceeded"] > 0
    spent = store.query_df("SELECT sum(cost_usd) AS c FROM teacher_calls")["c"][0]
    assert spent <= 0.5


def test_token_limit_stops_cleanly(store):
    with FakeOpenAIServer() as srv:
        with _llm(srv, max_total_tokens=300, max_concurrency=1).session(store) as s:
            res = s.complete(_reqs(50))
            assert "TEACHER_MAX_TOTAL_TOKENS" in s.budget_hit
    assert 0 < sum(r.ok for r in res) < 50


def test_api_key_never_logged_or_described(store, caplog):
    secret = "sk-test-SECRET-123"
    with FakeOpenAIServer() as srv:
        llm = _llm(srv, api_key=secret)
        with caplog.at_level(logging.DEBUG):
            with llm.session(store) as s:
                s.complete(_reqs(3))
    assert secret not in caplog.text
    assert secret not in str(llm.describe())
    ledger = store.query_df("SELECT * FROM teacher_calls")
    assert not ledger.astype(str).apply(lambda c: c.str.contains(secret)).any().any()


def test_samples_of_one_prompt_are_distinct_calls(store):
    with FakeOpenAIServer() as srv:
        reqs = [ChatRequest(messages=[{"role": "user", "content": "same"}], sample_index=i) for i in range(3)]
        with _llm(srv).session(store) as s:
            res = s.complete(reqs)
    assert len({r.call_key for r in res}) == 3 and srv.total == 3


def test_duplicate_requests_in_one_batch_are_sent_once(store):
    with FakeOpenAIServer() as srv:
        with _llm(srv).session(store) as s:
            res = s.complete(_reqs(2) + _reqs(2))
    assert srv.total == 2 and [r.content for r in res[:2]] == [r.content for r in res[2:]]


def test_journal_replay_recovers_rows(store, tmp_path):
    import json
    from pathlib import Path

    journal = Path(store.database).parent / "journal"
    journal.mkdir(parents=True, exist_ok=True)
    row = {"call_key": "k1", "model": "m", "role": "teacher", "status": "ok", "response": "hi",
           "finish_reason": "stop", "prompt_tokens": 1, "completion_tokens": 1, "cost_usd": 0.0, "latency_s": 0.1,
           "attempts": 1, "error": None, "category": "c", "run_id": "r", "request_json": "{}",
           "created_at": "2026-12-01T00:00:00+00:00"}
    (journal / "calls-999999-dead.jsonl").write_text(json.dumps(row) + "\n" + '{"torn": ')
    assert replay_journals(store, journal) == 1
    assert store.query_df("SELECT response FROM teacher_calls WHERE call_key = 'k1'")["response"][0] == "hi"
    assert not list(journal.glob("*.jsonl"))


SCHEMA = {"type": "object", "properties": {"score": {"type": "integer", "enum": [1, 2, 3]}},
          "required": ["score"], "additionalProperties": False}


def test_json_schema_goes_out_in_the_backends_wire_form(store):
    req = ChatRequest(messages=[{"role": "user", "content": "rate"}], json_schema=SCHEMA, schema_name="judgement")
    with FakeOpenAIServer(keep_bodies=True) as srv:
        with _llm(srv).session(store) as s:  # a remote server: the OpenAI form
            openai_key = s.key(req)
            assert s.complete([req])[0].ok
        with _llm(srv, structured_output="json_object").session(store) as s:  # llama-cpp-python's form
            llama_key = s.key(req)
            assert s.complete([req])[0].ok
        with _llm(srv, structured_output="off").session(store) as s:
            off_key = s.key(req)
            assert s.complete([req])[0].ok
    sent = [b.get("response_format") for b in srv.bodies]
    assert sent == [{"type": "json_schema", "json_schema": {"name": "judgement", "schema": SCHEMA, "strict": True}},
                    {"type": "json_object", "schema": SCHEMA}, None]
    assert len({openai_key, llama_key, off_key}) == 3  # keyed on what is sent, so no form answers for another
    ledger = store.query_df("SELECT request_json FROM teacher_calls")["request_json"]
    assert ledger.str.contains('"response_format"').sum() == 2


def test_embedded_server_defaults_to_llama_cpp_form():
    assert LLMResource().structured_output_form == "json_object"
    assert LLMResource(base_url="http://x/v1", model="m").structured_output_form == "json_schema"
    plain = ChatRequest(messages=[{"role": "user", "content": "hi"}])
    assert "response_format" not in plain.params("json_object")  # no schema: nothing changes for generation


def test_env_configures_teacher_and_judge(monkeypatch):
    from distill_assets.defs.resources import llm_from_env

    monkeypatch.setenv("TEACHER_BASE_URL", "http://teacher:8000/v1")
    monkeypatch.setenv("TEACHER_MODEL", "big")
    monkeypatch.setenv("TEACHER_MAX_CONCURRENCY", "32")
    monkeypatch.setenv("JUDGE_STRUCTURED_OUTPUT", "json_object")  # a llama-cpp-python judge server
    teacher, judge = llm_from_env("TEACHER", "teacher"), llm_from_env("JUDGE", "judge", fallback="TEACHER")
    assert (teacher.base_url, teacher.model, teacher.max_concurrency) == ("http://teacher:8000/v1", "big", 32)
    assert teacher.structured_output_form == "json_schema"
    assert (judge.role, judge.base_url, judge.structured_output_form) == ("judge", "http://teacher:8000/v1",
                                                                          "json_object")


@pytest.mark.parametrize("var,value,says", [
    ("JUDGE_STRUCTURED_OUTPUT", "bogus", "'auto', 'json_schema', 'json_object' or 'off'"),
    ("TEACHER_MAX_CONCURRENCY", "many", "invalid literal"), ("TEACHER_MAX_CONCURRENCY", "0", "greater than"),
])
def test_a_bad_env_value_names_its_variable(monkeypatch, var, value, says):
    from distill_assets.defs.resources import llm_from_env

    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError) as e:
        llm_from_env("JUDGE", "judge", fallback="TEACHER")
    assert str(e.value).startswith(f"environment variable {var}={value!r} is not a valid ") and says in str(e.value)
