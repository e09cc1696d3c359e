"""The Batch API client against the local fake (loopback only): results by custom_id, polling and progress,
partial failures, expiry, resume after kill -9 without a second submission, the input file format, and that the
API key never leaks."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from resources.batch import (
    BatchAuthError,
    BatchClient,
    BatchError,
    BatchRequest,
    BatchTimeout,
    redact_url,
    split_for_limits,
    write_jsonl,
)
from tests.fakes.batch_server import FakeBatchServer, start_server_process

ROOT = Path(__file__).resolve().parents[2]
FAST = {"poll_interval_s": 0.02, "max_poll_interval_s": 0.05, "timeout_s": 10}


def reqs(n: int, model: str = "gpt-4o-mini") -> list[BatchRequest]:
    return [BatchRequest(f"call-{i:03d}", {"model": model, "temperature": 0.0, "max_tokens": 32, "seed": 7,
                                           "messages": [{"role": "system", "content": "Be brief."},
                                                        {"role": "user", "content": f"question {i}"}]})
            for i in range(n)]


def never(*_):
    raise AssertionError("on_submitted must not be called")


def content(result) -> str:
    return result.body["choices"][0]["message"]["content"]


@pytest.fixture
def server():
    with FakeBatchServer(api_key="sk-test-right") as srv:
        yield srv


def client(srv, **kw) -> BatchClient:
    return BatchClient(srv.base_url, api_key=kw.pop("api_key", "sk-test-right"), **{**FAST, **kw})


def test_happy_path_results_by_custom_id(server):
    submitted = []
    out = client(server).run(reqs(12), on_submitted=lambda *a: submitted.append(a), metadata={"run": "t1"})
    assert out.status == "completed" and out.missing == [] and out.errors == []
    assert submitted == [(out.batch_id, server.batches[out.batch_id]["input_file_id"],
                          [f"call-{i:03d}" for i in range(12)])]
    assert sorted(out.results) == [f"call-{i:03d}" for i in range(12)]
    r = out.results["call-005"]
    assert r.ok and r.status_code == 200 and r.error is None and r.request_id
    assert content(r) == "echo: question 5" and r.body["usage"]["completion_tokens"] == 3
    assert server.batches[out.batch_id]["metadata"] == {"run": "t1"}
    assert server.stats["files_created"] == 1 and server.stats["batches_created"] == 1


def test_polls_with_delay_and_reports_progress():
    seen = []
    with FakeBatchServer(polls_per_stage=4) as srv:
        out = BatchClient(srv.base_url, **FAST).run(reqs(20), on_submitted=lambda *a: None, on_progress=seen.append)
    assert out.status == "completed" and len(out.results) == 20
    assert len(seen) >= 10 and [p["polls"] for p in seen] == list(range(1, len(seen) + 1))
    assert seen[0]["status"] == "validating" and seen[-1]["status"] == "completed"
    running = [p for p in seen if p["status"] == "in_progress"]
    assert [p["completed"] for p in running] == sorted(p["completed"] for p in running)
    assert any(0 < p["completed"] < 20 and p["eta_s"] is not None and p["eta_s"] >= 0 for p in running)
    assert all(p["total"] == 20 and p["batch_id"] == out.batch_id and p["elapsed_s"] >= 0 for p in seen)
    assert seen[-1]["eta_s"] == 0.0 and seen[-1]["completed"] == 20


def test_partial_failures_are_per_request():
    def fail(cid):
        return {"call-003": "error", "call-007": True}.get(cid)

    with FakeBatchServer(fail=fail) as srv:
        out = BatchClient(srv.base_url, **FAST).run(reqs(10), on_submitted=lambda *a: None)
        assert srv.batches[out.batch_id]["error_file_id"]
    assert out.status == "completed" and out.missing == []
    bad = {cid: r for cid, r in out.results.items() if not r.ok}
    assert sorted(bad) == ["call-003", "call-007"]
    assert bad["call-003"].status_code is None and bad["call-003"].error == \
        "invalid_prompt: injected failure for call-003"
    assert bad["call-007"].status_code == 500 and bad["call-007"].error == \
        "HTTP 500: injected server error for call-007"
    assert all(content(r) == f"echo: question {int(c[-3:])}" for c, r in out.results.items() if r.ok)
    assert out.batch["request_counts"] == {"total": 10, "completed": 8, "failed": 2}


@pytest.mark.parametrize("in_error_file", [True, False])
def test_expired_batch_keeps_partial_output_rest_missing(in_error_file):
    with FakeBatchServer(mode="expire", expire_fraction=0.4, expired_errors=in_error_file, shuffle_output=False,
                         fail=lambda cid: cid == "call-001") as srv:
        out = BatchClient(srv.base_url, **FAST).run(reqs(10), on_submitted=lambda *a: None)
    assert out.status == "expired"
    assert sorted(out.results) == ["call-000", "call-001", "call-002", "call-003"]
    assert not out.results["call-001"].ok and out.results["call-000"].ok
    assert out.missing == [f"call-{i:03d}" for i in range(4, 10)]


def test_failed_validation_reports_errors_and_everything_missing():
    mixed = reqs(2) + reqs(1, model="other-model")
    mixed[2] = BatchRequest("call-x", mixed[2].body)
    with FakeBatchServer() as srv:
        out = BatchClient(srv.base_url, **FAST).run(mixed, on_submitted=lambda *a: None)
    assert out.status == "failed" and out.results == {}
    assert out.missing == ["call-000", "call-001", "call-x"] and "mismatched_model" in out.errors[0]


def test_resume_polls_without_submitting(server):
    first = client(server, max_wait_s=0.0)
    server.hold = True
    with pytest.raises(BatchTimeout) as ei:
        first.run(reqs(5), on_submitted=lambda *a: None)
    server.release()
    out = client(server).run(reqs(5), on_submitted=never, resume_batch_id=ei.value.batch_id)
    assert out.status == "completed" and len(out.results) == 5 and out.batch_id == ei.value.batch_id
    assert server.stats["files_created"] == 1 and server.stats["batches_created"] == 1


def test_fake_server_keeps_state_across_restart(tmp_path):
    state = str(tmp_path / "state.json")
    with FakeBatchServer(state_file=state, hold=True) as first, pytest.raises(BatchTimeout) as ei:
        BatchClient(first.base_url, max_wait_s=0.0, **FAST).run(reqs(3), on_submitted=lambda *a: None)
    with FakeBatchServer(state_file=state) as second:
        out = BatchClient(second.base_url, **FAST).run(reqs(3), on_submitted=never, resume_batch_id=ei.value.batch_id)
        assert second.stats["files_created"] == 1 and second.stats["batches_created"] == 1
    assert out.status == "completed" and content(out.results["call-002"]) == "echo: question 2"

def test_on_submitted_failure_cancels_the_batch(server):
    def boom(*_):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        client(server).run(reqs(3), on_submitted=boom)
    (b,) = server.batches.values()
    assert server.stats["cancels"] == 1 and b["status"] == "cancelling"
    out = client(server).run(reqs(3), on_submitted=never, resume_batch_id=b["id"])
    assert out.status == "cancelled" and out.results == {} and out.missing == ["call-000", "call-001", "call-002"]


def test_lost_create_answer_does_not_submit_twice(server):
    server.faults = [{"method": "POST", "path": "/v1/batches", "status": 502, "after_commit": True},
                     {"method": "GET", "path": "/v1/batches/", "status": 503, "times": 2},
                     {"method": "GET", "path": "/v1/files/", "status": 500}]
    out = client(server).run(reqs(4), on_submitted=lambda *a: None)
    assert out.status == "completed" and len(out.results) == 4
    assert server.stats["batches_created"] == 1 and server.stats["faults_sent"] == 4 and server.stats["lists"] == 1


CLIENT_SCRIPT = textwrap.dedent("""
    import json, sys
    from resources.batch import BatchClient, BatchRequest
    url, id_file = sys.argv[1], sys.argv[2]
    reqs = [BatchRequest(f"call-{i:03d}", {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]})
            for i in range(6)]
    def persist(batch_id, file_id, ids):
        with open(id_file, "w") as f:
            json.dump({"batch_id": batch_id, "file_id": file_id, "ids": ids}, f)
    BatchClient(url, poll_interval_s=0.02, max_poll_interval_s=0.02).run(reqs, on_submitted=persist)
    print("finished")  # never reached: killed while polling
""")


def _stats(base_url: str) -> dict:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/_fake/stats", timeout=5) as r:
        return json.loads(r.read())


def test_kill_9_during_polling_then_resume_submits_nothing_new(tmp_path):
    proc, url = start_server_process("--hold", "--state-file", str(tmp_path / "state.json"))
    try:
        id_file, script = tmp_path / "batch_id.json", tmp_path / "client.py"
        script.write_text(CLIENT_SCRIPT)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cli = subprocess.Popen([sys.executable, str(script), url, str(id_file)], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (id_file.exists() and _stats(url)["polls"] >= 3):
            time.sleep(0.02)
        assert cli.poll() is None, cli.stderr.read()
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait(5)
        assert cli.returncode == -signal.SIGKILL and b"finished" not in cli.stdout.read()
        saved = json.loads(id_file.read_text())
        resumed = BatchClient(url, **FAST)
        assert resumed.retrieve(saved["batch_id"])["status"] == "in_progress"
        urllib.request.urlopen(urllib.request.Request(url.removesuffix("/v1") + "/_fake/release", data=b""))
        again = [BatchRequest(c, {"model": "m", "messages": [{"role": "user", "content": f"q{int(c[-3:])}"}]})
                 for c in saved["ids"]]
        out = resumed.run(again, on_submitted=never, resume_batch_id=saved["batch_id"])
        assert out.status == "completed" and out.missing == [] and len(out.results) == 6
        assert content(out.results["call-004"]) == "echo: q4"
        stats = _stats(url)
        assert stats["files_created"] == 1 and stats["batches_created"] == 1
    finally:
        proc.kill()
        proc.wait(5)


def test_jsonl_matches_openai_and_vllm_run_batch_format():
    # The example line from the `vllm run-batch` docs (OpenAI's batch input format).
    doc_line = ('{"custom_id": "request-1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": '
                '"meta-llama/Meta-Llama-3-8B-Instruct", "messages": [{"role": "system", "content": "You are a '
                'helpful assistant."},{"role": "user", "content": "Hello world!"}],"max_completion_tokens": 1000}}')
    doc = json.loads(doc_line)
    data = write_jsonl([BatchRequest("request-1", doc["body"]), BatchRequest("r-2", {"model": "m", "messages": [
        {"role": "user", "content": "héllo\nworld"}], "response_format": {"type": "json_object"}})])
    lines = data.decode("utf-8").split("\n")
    assert len(lines) == 3 and lines[2] == "" and json.loads(lines[0]) == doc
    second = json.loads(lines[1])
    assert list(second) == ["custom_id", "method", "url", "body"] and "héllo" in lines[1]
    assert second["body"]["response_format"] == {"type": "json_object"}
    with pytest.raises(ValueError, match="batch request 1 .*duplicate custom_id"):
        write_jsonl([BatchRequest("a", {"model": "m"}), BatchRequest("a", {"model": "m"})])
    with pytest.raises(ValueError, match="field body.model"):
        write_jsonl([BatchRequest("a", {"messages": []})])
    with pytest.raises(ValueError, match="body.stream"):
        write_jsonl([BatchRequest("a", {"model": "m", "stream": True})])


def test_split_for_limits_by_count_bytes_and_model():
    rs = reqs(7) + reqs(2, model="b")
    rs[7:] = [BatchRequest(f"b-{i}", r.body) for i, r in enumerate(rs[7:])]
    chunks = list(split_for_limits(rs, max_requests=3))
    assert [[r.custom_id for r in c] for c in chunks] == [
        ["call-000", "call-001", "call-002"], ["call-003", "call-004", "call-005"], ["call-006"], ["b-0", "b-1"]]
    one = len(write_jsonl(rs[:1]))
    by_bytes = list(split_for_limits(rs[:7], max_bytes=2 * one + 1))
    assert [len(c) for c in by_bytes] == [2, 2, 2, 1] and all(len(write_jsonl(c)) <= 2 * one + 1 for c in by_bytes)
    with pytest.raises(ValueError, match="exceeds max_bytes"):
        list(split_for_limits(rs[:1], max_bytes=10))


def test_401_names_the_env_var_and_never_shows_the_key(server):
    secret = "sk-wrong-SECRET-value-123"
    c = client(server, api_key=secret, key_env_name="TEACHER_API_KEY")
    assert secret not in repr(c) and "api_key=set" in repr(c)
    with pytest.raises(BatchAuthError) as ei:
        c.run(reqs(1), on_submitted=never)
    msg = str(ei.value)
    assert ei.value.status == 401 and "HTTP 401" in msg and "TEACHER_API_KEY" in msg and "/v1/files" in msg
    assert secret not in msg and secret not in repr(ei.value) and "***" in msg  # the fake echoes the key back
    with pytest.raises(BatchAuthError, match="no API key was given: set TEACHER_API_KEY"):
        BatchClient(server.base_url, key_env_name="TEACHER_API_KEY", **FAST).retrieve("batch_x")


def test_http_errors_are_clear_and_redacted(server):
    with pytest.raises(BatchError) as ei:
        client(server).retrieve("batch_nope")
    msg = str(ei.value)
    assert ei.value.status == 404 and "HTTP 404" in msg and "No batch found" in msg and "sk-test-right" not in msg
    with pytest.raises(ValueError, match="without credentials") as ei:
        BatchClient(server.base_url.replace("http://", "http://u:pw@") + "?token=abc")
    assert "pw" not in str(ei.value) and "token" not in str(ei.value)
    dead = BatchClient("http://127.0.0.1:9/v1", api_key="sk-test-right", max_retries=1, **FAST)
    with pytest.raises(BatchError, match="connection failed") as ei:
        dead.retrieve("b")
    assert ei.value.status is None and ei.value.transient


def test_redact_url():
    assert redact_url("https://user:pw@api.example.com:8443/v1?api_key=abc#x") == "https://api.example.com:8443/v1"
    assert redact_url("http://[::1]:8000/v1/batches?a=b") == "http://[::1]:8000/v1/batches"
    assert redact_url("http://host/v1") == "http://host/v1"
    assert redact_url("user:pw@host/v1?k=1") == "host/v1"
