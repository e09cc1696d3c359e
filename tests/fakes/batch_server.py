"""A local fake of the OpenAI Batch API (files + batches), for tests only. Loopback, port 0 by default.

A batch moves validating -> in_progress -> finalizing -> completed (or failed / expired / cancelling -> cancelled)
one stage per `polls_per_stage` GETs of it, or per `stage_s` seconds. It counts every submission so tests can prove
that nothing was bought twice, injects per-request failures and HTTP faults, and answers deterministically.
Runs in a thread (`with FakeBatchServer() as srv`) or as its own process
(`python -m tests.fakes.batch_server --port 0 --state-file s.json`, first stdout line is the base URL), so a test can
kill -9 the *client* while the server lives on. Control endpoints: GET /_fake/stats, POST /_fake/release.
POST /v1/chat/completions answers online (never failing), as the same endpoint would for retried requests.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

STAGES = ("validating", "in_progress", "finalizing")


def echo_responder(body: dict) -> str:
    user = next((m.get("content") for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")
    return f"echo: {user}"


@dataclass
class FakeBatchServer:
    polls_per_stage: int = 1
    stage_s: float = 0.0  # > 0: stages advance with wall time instead of polls
    mode: str = "complete"  # complete | expire
    expire_fraction: float = 0.5  # share of requests answered before an expiry
    expired_errors: bool = True  # expired requests go to the error file as batch_expired, as OpenAI does
    hold: bool = False  # freeze batches in_progress until release()
    fail: Callable[[str], object] | None = None  # custom_id -> falsy | "error" (error object) | truthy (HTTP 500)
    fail_rate: float = 0.0
    seed: int = 0
    responder: Callable[[dict], str] = echo_responder
    api_key: str | None = None  # when set, require `Authorization: Bearer <api_key>`
    shuffle_output: bool = True  # OpenAI does not keep input order in the output file
    state_file: str | None = None
    host: str = "127.0.0.1"
    port: int = 0
    # [{"method", "path" (prefix), "status", "times", "after_commit"}]: answer with `status` instead
    faults: list = field(default_factory=list)
    stats: dict = field(default_factory=lambda: {"files_created": 0, "batches_created": 0, "polls": 0,
                                                 "downloads": 0, "cancels": 0, "lists": 0, "faults_sent": 0,
                                                 "chat_calls": 0})

    def __post_init__(self):
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self._lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        if self.state_file and Path(self.state_file).exists():
            saved = json.loads(Path(self.state_file).read_text())
            self.files, self.batches, self.stats = saved["files"], saved["batches"], saved["stats"]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> FakeBatchServer:
        server = self

        class Handler(_Handler):
            fake = server

        self._httpd = ThreadingHTTPServer((self.host, self.port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def release(self) -> None:
        with self._lock:
            self.hold = False

    def _save(self) -> None:
        if self.state_file:
            tmp = Path(self.state_file + ".tmp")
            tmp.write_text(json.dumps({"files": self.files, "batches": self.batches, "stats": self.stats}))
            tmp.replace(self.state_file)

    # model -------------------------------------------------------------------------------------------------------
    def _file(self, content: bytes, purpose: str, filename: str) -> dict:
        fid = "file-" + uuid.uuid4().hex[:24]
        self.files[fid] = {"id": fid, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                           "filename": filename, "purpose": purpose, "content": content.decode("utf-8")}
        return {k: v for k, v in self.files[fid].items() if k != "content"}

    def _validate(self, text: str, endpoint: str) -> tuple[list, list]:
        lines, errors, seen, models = [], [], set(), set()
        for n, raw in enumerate(text.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                item = json.loads(raw)
                cid, body = item["custom_id"], item["body"]
                if item.get("method") != "POST" or item.get("url") != endpoint:
                    raise ValueError(f"method must be POST and url {endpoint}")
                if not body.get("model") or not isinstance(body.get("messages"), list):
                    raise ValueError("body needs model and messages")
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                errors.append({"code": "invalid_request", "message": str(e), "param": None, "line": n})
                continue
            if cid in seen:
                errors.append({"code": "duplicate_custom_id", "message": f"duplicate {cid}", "param": "custom_id",
                               "line": n})
            seen.add(cid)
            models.add(body["model"])
            lines.append(item)
        if len(models) > 1:
            errors.append({"code": "mismatched_model", "message": "one model per batch", "param": "body.model",
                           "line": None})
        return lines, errors

    def _answer(self, item: dict, rng: random.Random | None) -> tuple[bool, dict]:
        cid, body = item["custom_id"], item["body"]
        verdict = self.fail(cid) if self.fail and rng else None
        if not verdict and self.fail_rate and rng and rng.random() < self.fail_rate:
            verdict = True
        rid = "req_" + uuid.uuid4().hex[:16]
        line = {"id": "batch_req_" + uuid.uuid4().hex[:16], "custom_id": cid, "response": None, "error": None}
        if verdict == "error":
            line["error"] = {"code": "invalid_prompt", "message": f"injected failure for {cid}"}
            return False, line
        if verdict:
            line["response"] = {"status_code": 500, "request_id": rid, "body": {"error": {
                "message": f"injected server error for {cid}", "type": "server_error"}}}
            return False, line
        content = self.responder(body)
        pt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        ct = len(content.split())
        line["response"] = {"status_code": 200, "request_id": rid, "body": {
            "id": "chatcmpl-" + uuid.uuid4().hex[:16], "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"), "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": None,
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}}}
        return True, line

    def _finish(self, b: dict, status: str, answered: int, not_run_code: str | None) -> None:
        items = json.loads(b["_items"])
        rng = random.Random(f"{self.seed}:{b['id']}")
        out, err = [], []
        for i, item in enumerate(items):
            if i < answered:
                ok, line = self._answer(item, rng)
                (out if ok else err).append(line)
            elif not_run_code:
                err.append({"id": "batch_req_" + uuid.uuid4().hex[:16], "custom_id": item["custom_id"],
                            "response": None, "error": {"code": not_run_code, "message": "not executed"}})
        if self.shuffle_output:
            rng.shuffle(out)
            rng.shuffle(err)
        for key, lines in (("output_file_id", out), ("error_file_id", err)):
            if lines:
                data = "".join(json.dumps(x) + "\n" for x in lines).encode()
                b[key] = self._file(data, "batch_output", f"{b['id']}_{key}.jsonl")["id"]
        b["request_counts"] = {"total": len(items), "completed": len(out),
                               "failed": sum(1 for x in err if not (x["error"] and x["error"]["code"] == not_run_code))}
        b["status"], b[f"{status}_at"] = status, int(time.time())

    def _advance(self, b: dict) -> None:
        now = time.time()
        b["_polls"] += 1
        if b["status"] not in STAGES + ("cancelling",):
            return
        if b["status"] == "cancelling":
            self._finish(b, "cancelled", b["request_counts"]["completed"], "batch_cancelled")
            return
        total = b["request_counts"]["total"]
        if self.stage_s > 0:
            frac = (now - b["_stage_t"]) / self.stage_s
        else:
            frac = b["_polls"] / max(1, self.polls_per_stage)
        if b["status"] == "in_progress":
            if self.hold:
                return
            cap = self.expire_fraction if self.mode == "expire" else 1.0
            b["request_counts"]["completed"] = min(int(total * cap), int(total * min(frac, 1.0)))
        if frac < 1.0:
            return
        b["_polls"], b["_stage_t"] = 0, now
        if b["status"] == "validating":
            if b["_errors"]:
                b["errors"] = {"object": "list", "data": b["_errors"]}
                b["status"], b["failed_at"] = "failed", int(now)
            else:
                b["status"], b["in_progress_at"] = "in_progress", int(now)
        elif b["status"] == "in_progress":
            if self.mode == "expire":
                self._finish(b, "expired", int(total * self.expire_fraction),
                             "batch_expired" if self.expired_errors else None)
            else:
                b["status"], b["finalizing_at"] = "finalizing", int(now)
        else:
            self._finish(b, "completed", total, None)

    def public(self, b: dict) -> dict:
        return {k: v for k, v in b.items() if not k.startswith("_")}

    # HTTP ---------------------------------------------------------------------------------------------------------
    def handle(self, method: str, path: str, headers, raw: bytes) -> tuple[int, dict | bytes]:
        with self._lock:
            if path == "/_fake/stats":
                return 200, dict(self.stats)
            if path == "/_fake/release":
                self.hold = False
                return 200, {"hold": False}
            if self.api_key is not None:
                given = headers.get("Authorization", "")
                if given != f"Bearer {self.api_key}":
                    # Echo the key back in full, a worse case than OpenAI's partial mask, to test scrubbing.
                    return 401, {"error": {"message": f"Incorrect API key provided: {given[7:]}",
                                           "type": "invalid_request_error", "code": "invalid_api_key"}}
            fault = next((f for f in self.faults if f.get("times", 1) > 0 and f["method"] == method
                          and path.startswith(f["path"])), None)
            if fault and not fault.get("after_commit"):
                return self._fault(fault)
            status, body = self._route(method, path, headers, raw)
            self._save()
            return self._fault(fault) if fault else (status, body)

    def _fault(self, fault: dict) -> tuple[int, dict]:
        fault["times"] = fault.get("times", 1) - 1
        self.stats["faults_sent"] += 1
        return fault["status"], {"error": {"message": "injected fault", "type": "server_error"}}

    def _route(self, method: str, path: str, headers, raw: bytes) -> tuple[int, dict | bytes]:
        parts = path.split("?", 1)[0].strip("/").split("/")
        if method == "POST" and parts == ["v1", "chat", "completions"]:  # the online path, for retries
            self.stats["chat_calls"] = self.stats.get("chat_calls", 0) + 1
            _, line = self._answer({"custom_id": "", "body": json.loads(raw or b"{}")}, None)
            return 200, line["response"]["body"]
        if method == "POST" and parts == ["v1", "files"]:
            form = _multipart(headers.get("Content-Type", ""), raw)
            if form.get("purpose", (None, b""))[1] != b"batch" or "file" not in form:
                return 400, {"error": {"message": "need purpose=batch and a file"}}
            self.stats["files_created"] += 1
            return 200, self._file(form["file"][1], "batch", form["file"][0] or "upload.jsonl")
        if method == "GET" and len(parts) == 4 and parts[:2] == ["v1", "files"] and parts[3] == "content":
            f = self.files.get(parts[2])
            if f is None:
                return 404, {"error": {"message": f"No such File object: {parts[2]}"}}
            self.stats["downloads"] += 1
            return 200, f["content"].encode()
        if method == "POST" and parts == ["v1", "batches"]:
            req = json.loads(raw or b"{}")
            f = self.files.get(req.get("input_file_id"))
            if f is None or req.get("completion_window") != "24h" or req.get("endpoint") != "/v1/chat/completions":
                return 400, {"error": {"message": "need a known input_file_id, endpoint /v1/chat/completions, "
                                                  "completion_window 24h"}}
            items, errors = self._validate(f["content"], req["endpoint"])
            self.stats["batches_created"] += 1
            bid = "batch_" + uuid.uuid4().hex[:24]
            now = int(time.time())
            self.batches[bid] = {
                "id": bid, "object": "batch", "endpoint": req["endpoint"], "errors": None,
                "input_file_id": f["id"], "completion_window": "24h", "status": "validating",
                "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": None,
                "expires_at": now + 86400, "finalizing_at": None, "completed_at": None, "failed_at": None,
                "expired_at": None, "cancelling_at": None, "cancelled_at": None,
                "request_counts": {"total": len(items), "completed": 0, "failed": 0},
                "metadata": req.get("metadata"), "_items": json.dumps(items), "_errors": errors, "_polls": 0,
                "_stage_t": time.time()}
            return 200, self.public(self.batches[bid])
        if method == "GET" and parts == ["v1", "batches"]:
            self.stats["lists"] += 1
            data = sorted(self.batches.values(), key=lambda b: b["created_at"], reverse=True)
            return 200, {"object": "list", "data": [self.public(b) for b in data], "has_more": False}
        if len(parts) >= 3 and parts[:2] == ["v1", "batches"]:
            b = self.batches.get(parts[2])
            if b is None:
                return 404, {"error": {"message": f"No batch found with id '{parts[2]}'"}}
            if method == "GET" and len(parts) == 3:
                self.stats["polls"] += 1
                self._advance(b)
                return 200, self.public(b)
            if method == "POST" and parts[3:] == ["cancel"]:
                self.stats["cancels"] += 1
                if b["status"] in STAGES:
                    b["status"], b["cancelling_at"], b["_polls"] = "cancelling", int(time.time()), 0
                return 200, self.public(b)
        return 404, {"error": {"message": f"unknown route {method} {path}"}}


def _multipart(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """name -> (filename, value) of a multipart/form-data body."""
    boundary = next((p.split("=", 1)[1].strip('"') for p in content_type.split(";") if "boundary=" in p), None)
    if not boundary:
        return {}
    out = {}
    for part in raw.split(b"--" + boundary.encode())[1:]:
        if part.startswith(b"--"):
            break
        head, _, value = part.lstrip(b"\r\n").partition(b"\r\n\r\n")
        disp = next((h for h in head.decode().split("\r\n") if h.lower().startswith("content-disposition")), "")
        attrs = dict(a.strip().split("=", 1) for a in disp.split(";")[1:] if "=" in a)
        name = attrs.get("name", "").strip('"')
        out[name] = (attrs.get("filename", "").strip('"') or None, value[:-2] if value.endswith(b"\r\n") else value)
    return out


class _Handler(BaseHTTPRequestHandler):
    fake: FakeBatchServer
    protocol_version = "HTTP/1.1"

    def _serve(self, method: str) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, body = self.fake.handle(method, self.path, self.headers, raw)
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream" if isinstance(body, bytes) else
                         "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._serve("GET")

    def do_POST(self):
        self._serve("POST")

    def log_message(self, *args):
        pass


def start_server_process(*args: str) -> tuple:
    """Run the fake in its own process with CLI `args`; returns (Popen, base_url)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.batch_server", "--port", "0", *args],
                            cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="fake OpenAI Batch API server (tests only)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--state-file", default=None)
    ap.add_argument("--polls-per-stage", type=int, default=1)
    ap.add_argument("--stage-s", type=float, default=0.0)
    ap.add_argument("--mode", choices=("complete", "expire"), default="complete")
    ap.add_argument("--fail-rate", type=float, default=0.0)
    ap.add_argument("--hold", action="store_true", help="keep batches in_progress until POST /_fake/release")
    ap.add_argument("--api-key", default=None)
    a = ap.parse_args()
    srv = FakeBatchServer(port=a.port, state_file=a.state_file, polls_per_stage=a.polls_per_stage,
                          stage_s=a.stage_s, mode=a.mode, fail_rate=a.fail_rate, hold=a.hold,
                          api_key=a.api_key).start()
    print(srv.base_url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        srv.stop()
