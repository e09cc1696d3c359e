"""A client for the OpenAI Batch API (files + batches), half the price of online calls, results within 24 h.

Pure transport: no first-party imports, no Dagster, no database. Persistence is the caller's, through
`on_submitted`, which runs before the first poll so a killed process can resume the same batch instead of paying
for it twice. Blocking stdlib HTTP (urllib) so the wire format is explicit; from async code call it through
`asyncio.to_thread`.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

__all__ = ["BatchRequest", "BatchItemResult", "BatchOutcome", "BatchClient", "BatchError", "BatchAuthError",
           "BatchTimeout", "write_jsonl", "split_for_limits", "redact_url", "progress_report", "read_results",
           "TERMINAL_STATUSES"]

CHAT_ENDPOINT = "/v1/chat/completions"
TERMINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
# Error codes that mean "never executed", not "the model failed": those requests belong in `missing` (resubmit).
NOT_RUN_CODES = frozenset({"batch_expired", "batch_cancelled"})
TRANSIENT_HTTP = frozenset({408, 409, 429, 500, 502, 503, 504})


def redact_url(url: str) -> str:
    """`url` without userinfo, query string or fragment: safe to show in messages and logs."""
    try:
        p = urllib.parse.urlsplit(str(url))
        port = p.port
    except ValueError:
        return "<unparseable url>"
    if not p.netloc:  # "user:pw@host/path" without a scheme parses as a path
        return str(url).split("?", 1)[0].split("#", 1)[0].rsplit("@", 1)[-1]
    host = p.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return urllib.parse.urlunsplit((p.scheme, host + (f":{port}" if port is not None else ""), p.path, "", ""))


class BatchError(RuntimeError):
    """A Batch API call failed. `status` is the HTTP status (None for connection errors); `url` is redacted."""

    def __init__(self, message: str, *, status: int | None = None, url: str | None = None,
                 batch_id: str | None = None, transient: bool = False, retry_after: float | None = None):
        super().__init__(message)
        self.status, self.url, self.batch_id, self.transient = status, url, batch_id, transient
        self.retry_after = retry_after


class BatchAuthError(BatchError):
    """401/403: the API key is missing or wrong."""


class BatchTimeout(BatchError):
    """`max_wait_s` passed before the batch finished. The batch keeps running: resume it with its id."""


@dataclass(frozen=True)
class BatchRequest:
    custom_id: str
    body: dict  # exactly a /v1/chat/completions request body


@dataclass(frozen=True)
class BatchItemResult:
    custom_id: str
    ok: bool
    status_code: int | None
    body: dict | None  # the chat.completion on success, the error body (if any) otherwise
    error: str | None
    request_id: str | None = None


@dataclass
class BatchOutcome:
    batch_id: str
    status: str
    results: dict[str, BatchItemResult]  # every line of the output and error files, by custom_id
    missing: list[str]  # requested custom_ids never executed (expired, cancelled, failed batch): resubmit them
    errors: list[str] = field(default_factory=list)  # batch-level errors and unreadable result lines
    batch: dict = field(default_factory=dict)  # the last batch object seen


def _line(req: BatchRequest, url: str) -> bytes:
    return (json.dumps({"custom_id": req.custom_id, "method": "POST", "url": url, "body": req.body},
                       ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def _check(reqs: list[BatchRequest]) -> None:
    seen: set[str] = set()
    for i, r in enumerate(reqs):
        where = f"batch request {i} ({r.custom_id!r})"
        if not isinstance(r.custom_id, str) or not r.custom_id:
            raise ValueError(f"{where}: field custom_id must be a non-empty string")
        if r.custom_id in seen:
            raise ValueError(f"{where}: duplicate custom_id (the Batch API rejects the whole file)")
        seen.add(r.custom_id)
        if not isinstance(r.body, dict) or not r.body.get("model"):
            raise ValueError(f"{where}: field body.model is required")
        if r.body.get("stream"):
            raise ValueError(f"{where}: field body.stream must be off; batches do not stream")


def write_jsonl(requests: Iterable[BatchRequest], url: str = CHAT_ENDPOINT) -> bytes:
    """The batch input file: one `{"custom_id","method":"POST","url","body"}` per line (OpenAI and
    `vllm run-batch` read the same format). Raises ValueError on duplicate ids or a body without a model."""
    reqs = list(requests)
    _check(reqs)
    return b"".join(_line(r, url) for r in reqs)


def split_for_limits(requests: Iterable[BatchRequest], max_requests: int = 50_000,
                     max_bytes: int = 200 * 1024 * 1024, url: str = CHAT_ENDPOINT) -> Iterator[list[BatchRequest]]:
    """Chunks that each fit one batch: at most `max_requests` lines, `max_bytes` of JSONL, and one model
    (OpenAI rejects a file that mixes models). Order is kept within each model."""
    by_model: dict[str, list[BatchRequest]] = {}
    for r in requests:
        by_model.setdefault(str(r.body.get("model")), []).append(r)
    for reqs in by_model.values():
        chunk, size = [], 0
        for r in reqs:
            n = len(_line(r, url))
            if n > max_bytes:
                raise ValueError(f"batch request {r.custom_id!r}: {n} bytes alone exceeds max_bytes={max_bytes}")
            if chunk and (len(chunk) >= max_requests or size + n > max_bytes):
                yield chunk
                chunk, size = [], 0
            chunk.append(r)
            size += n
        if chunk:
            yield chunk


class BatchClient:
    """Files + batches over HTTP. `base_url` is the OpenAI-style root including `/v1` (https://api.openai.com/v1).

    Transient failures (429, 5xx, connection errors) are retried `max_retries` times with backoff from
    `poll_interval_s` up to `max_poll_interval_s`, honouring Retry-After. `key_env_name` is only used in messages.
    """

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout_s: float = 120.0,
                 poll_interval_s: float = 5.0, max_poll_interval_s: float = 60.0, headers: dict | None = None,
                 key_env_name: str = "OPENAI_API_KEY", max_retries: int = 5, max_wait_s: float | None = None,
                 trust_env: bool = False):
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or "@" in parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"BatchClient: base_url {redact_url(base_url)!r} must be http(s) without credentials or "
                             "query string (pass the key as api_key)")
        self.base_url = base_url.rstrip("/")
        self.timeout_s, self.poll_interval_s, self.max_poll_interval_s = timeout_s, poll_interval_s, max_poll_interval_s
        self.key_env_name, self.max_retries, self.max_wait_s = key_env_name, max_retries, max_wait_s
        self.__api_key = api_key or None
        self.__headers = dict(headers or {})
        if api_key:
            self.__headers["Authorization"] = f"Bearer {api_key}"
        # Same default as the aiohttp chat transport: ignore *_proxy variables unless asked.
        handlers = [] if trust_env else [urllib.request.ProxyHandler({})]
        self._opener = urllib.request.build_opener(*handlers)

    def __repr__(self) -> str:
        return (f"BatchClient(base_url={redact_url(self.base_url)!r}, api_key={'set' if self.__api_key else 'unset'}, "
                f"poll_interval_s={self.poll_interval_s}, max_poll_interval_s={self.max_poll_interval_s})")

    # low level -------------------------------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        secrets = [self.__api_key or ""] + [v for k, v in self.__headers.items()
                                            if any(w in k.lower() for w in ("auth", "key", "token", "secret"))]
        for secret in secrets:
            if len(secret) >= 4:
                text = text.replace(secret, "***")
        return text

    def _backoff(self, attempt: int, retry_after: float | None = None) -> float:
        wait = self.poll_interval_s * (2 ** attempt) if retry_after is None else retry_after
        return max(0.0, min(wait, self.max_poll_interval_s))

    def _once(self, method: str, path: str, data: bytes | None, content_type: str | None) -> bytes:
        url = self.base_url + path
        shown = f"{method} {redact_url(url)}"
        req = urllib.request.Request(url, data=data, method=method, headers=dict(self.__headers))
        if content_type:
            req.add_header("Content-Type", content_type)
        try:
            with self._opener.open(req, timeout=self.timeout_s) as resp:
                return resp.read()
        except urllib.error.HTTPError as e:
            raw = e.read() or b""
            try:
                err = json.loads(raw).get("error") or {}
                detail = err.get("message") if isinstance(err, dict) else str(err)
            except (ValueError, AttributeError):
                detail = raw[:300].decode("utf-8", "replace")
            msg = self._scrub(f"{shown}: HTTP {e.code} {e.reason}: {detail or '(no message)'}")
            if e.code in (401, 403):
                hint = (f"set {self.key_env_name} to a valid API key for this server" if self.__api_key else
                        f"no API key was given: set {self.key_env_name}")
                raise BatchAuthError(f"{msg}. {hint}", status=e.code, url=redact_url(url)) from None
            ra = (e.headers.get("Retry-After") if e.headers else None) or ""
            raise BatchError(msg, status=e.code, url=redact_url(url), transient=e.code in TRANSIENT_HTTP,
                             retry_after=float(ra) if ra.replace(".", "", 1).isdigit() else None) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:  # refused, reset, timeout, DNS
            reason = getattr(e, "reason", e)
            raise BatchError(self._scrub(f"{shown}: connection failed: {reason}"), url=redact_url(url),
                             transient=True) from None

    def _call(self, method: str, path: str, data: bytes | None = None, content_type: str | None = None,
              retry: bool = True) -> bytes:
        for attempt in range(self.max_retries + 1):
            try:
                return self._once(method, path, data, content_type)
            except BatchError as e:
                if not (retry and e.transient) or attempt == self.max_retries:
                    raise
                time.sleep(self._backoff(attempt, e.retry_after))
        raise AssertionError("unreachable")

    def _json(self, method: str, path: str, payload: dict | None = None, *, data: bytes | None = None,
              content_type: str | None = None, retry: bool = True) -> dict:
        if payload is not None:
            data, content_type = json.dumps(payload).encode(), "application/json"
        raw = self._call(method, path, data, content_type, retry=retry)
        try:
            return json.loads(raw)
        except ValueError:
            raise BatchError(f"{method} {redact_url(self.base_url + path)}: response is not JSON: "
                             f"{raw[:200]!r}") from None

    # endpoints -------------------------------------------------------------------------------------------------
    def upload(self, jsonl: bytes, filename: str = "batch.jsonl") -> str:
        """POST /files (multipart, purpose=batch) -> file id."""
        boundary = uuid.uuid4().hex
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                f"Content-Type: application/jsonl\r\n\r\n").encode() + jsonl + f"\r\n--{boundary}--\r\n".encode()
        return self._json("POST", "/files", data=body, content_type=f"multipart/form-data; boundary={boundary}")["id"]

    def create(self, file_id: str, endpoint: str = CHAT_ENDPOINT, completion_window: str = "24h",
               metadata: dict | None = None) -> dict:
        """POST /batches -> batch object. A create whose answer was lost may still have created the batch, so
        before each retry look for a batch on this input file: a retry must never buy the same work twice."""
        payload = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": completion_window}
        if metadata:
            payload["metadata"] = metadata
        for attempt in range(self.max_retries + 1):
            try:
                return self._json("POST", "/batches", payload, retry=False)
            except BatchError as e:
                if not e.transient or attempt == self.max_retries:
                    raise
                time.sleep(self._backoff(attempt, e.retry_after))
                found = self.find_by_input_file(file_id)
                if found is not None:
                    return found
        raise AssertionError("unreachable")

    def find_by_input_file(self, file_id: str, limit: int = 100) -> dict | None:
        """The most recent batch whose input is `file_id`, from the first page of GET /batches."""
        listing = self._json("GET", f"/batches?limit={int(limit)}")
        return next((b for b in listing.get("data", []) if b.get("input_file_id") == file_id), None)

    def retrieve(self, batch_id: str) -> dict:
        return self._json("GET", f"/batches/{urllib.parse.quote(batch_id, safe='')}")

    def cancel(self, batch_id: str) -> dict:
        return self._json("POST", f"/batches/{urllib.parse.quote(batch_id, safe='')}/cancel")

    def download(self, file_id: str) -> bytes:
        return self._call("GET", f"/files/{urllib.parse.quote(file_id, safe='')}/content")

    # high level ------------------------------------------------------------------------------------------------
    def run(self, requests: Iterable[BatchRequest], *, on_submitted: Callable[[str, str, list[str]], None],
            resume_batch_id: str | None = None, on_progress: Callable[[dict], None] | None = None,
            metadata: dict | None = None) -> BatchOutcome:
        """Submit `requests` as one batch (or, with `resume_batch_id`, follow that batch and never submit), poll
        until it ends, and return every result by custom_id. `on_submitted(batch_id, input_file_id, custom_ids)`
        runs before the first poll; if it raises, the batch is cancelled and the error re-raised."""
        reqs = list(requests)
        ids = [r.custom_id for r in reqs]
        if resume_batch_id:
            batch_id = resume_batch_id
        else:
            if not reqs:
                raise ValueError("BatchClient.run: no requests to submit")
            file_id = self.upload(write_jsonl(reqs))
            batch_id = self.create(file_id, metadata=metadata)["id"]
            try:
                on_submitted(batch_id, file_id, ids)
            except BaseException as e:
                try:
                    self.cancel(batch_id)
                except BatchError as ce:
                    e.add_note(f"cancelling batch {batch_id} failed too: {ce}")
                raise
        batch = self._wait(batch_id, on_progress)
        return self._collect(batch, ids)

    def _wait(self, batch_id: str, on_progress: Callable[[dict], None] | None) -> dict:
        start, interval, polls = time.monotonic(), self.poll_interval_s, 0
        while True:
            batch = self.retrieve(batch_id)
            polls += 1
            if on_progress is not None:
                on_progress(progress_report(batch, time.monotonic() - start, polls))
            if batch.get("status") in TERMINAL_STATUSES:
                return batch
            if self.max_wait_s is not None and time.monotonic() - start + interval > self.max_wait_s:
                raise BatchTimeout(f"batch {batch_id} still {batch.get('status')} after {self.max_wait_s:g} s; "
                                   "it keeps running: resume it with resume_batch_id", batch_id=batch_id)
            time.sleep(interval)
            interval = min(interval * 1.5, self.max_poll_interval_s)

    def _collect(self, batch: dict, ids: list[str]) -> BatchOutcome:
        results: dict[str, BatchItemResult] = {}
        errors = [f"{e.get('code')}: {e.get('message')}" + (f" (line {e['line']})" if e.get("line") else "")
                  for e in ((batch.get("errors") or {}).get("data") or [])]
        not_run: set[str] = set()
        for key in ("output_file_id", "error_file_id"):
            if batch.get(key):
                _parse_results(self.download(batch[key]), batch[key], results, not_run, errors)
        missing = [c for c in ids if c not in results]
        # Lines for ids the caller did not pass (a resumed batch, another run) are kept, never dropped.
        missing += sorted(c for c in not_run if c not in results and c not in ids)
        return BatchOutcome(batch["id"], batch.get("status", "unknown"), results, missing, errors, batch)


def read_results(raw: bytes, source: str) -> tuple[dict[str, BatchItemResult], set[str], list[str]]:
    """A batch output (or error) file, from the Batch API or `vllm run-batch`: results by custom_id, the ids that
    never ran, and unreadable lines (each naming `source` and its line)."""
    results: dict[str, BatchItemResult] = {}
    not_run: set[str] = set()
    errors: list[str] = []
    _parse_results(raw, source, results, not_run, errors)
    return results, not_run, errors


def _parse_results(raw: bytes, file_id: str, results: dict, not_run: set, errors: list) -> None:
    for n, text in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
            cid = line["custom_id"]
        except (ValueError, KeyError, TypeError):
            errors.append(f"file {file_id} line {n}: unreadable result line (field custom_id); its request is "
                          "reported missing")
            continue
        resp, err = line.get("response") or {}, line.get("error")
        code, body = resp.get("status_code"), resp.get("body")
        if isinstance(err, dict) and err.get("code") in NOT_RUN_CODES:
            not_run.add(cid)
            continue
        ok = code == 200 and not err and isinstance(body, dict)
        text_err = None
        if not ok:
            if isinstance(err, dict):
                text_err = f"{err.get('code')}: {err.get('message')}"
            elif err:
                text_err = str(err)
            else:
                inner = (body or {}).get("error") if isinstance(body, dict) else None
                detail = inner.get("message") if isinstance(inner, dict) else (inner or body)
                text_err = f"HTTP {code}: {detail}"
        if cid in results and results[cid].ok and not ok:
            continue  # a success outranks a duplicate failure line
        results[cid] = BatchItemResult(cid, ok, code, body if isinstance(body, dict) else None, text_err,
                                       resp.get("request_id"))


def progress_report(batch: dict, elapsed_s: float, polls: int) -> dict:
    """What `on_progress` receives: counts, elapsed seconds and an ETA from the rate so far (None until known)."""
    counts = batch.get("request_counts") or {}
    total, done_ok, failed = (int(counts.get(k) or 0) for k in ("total", "completed", "failed"))
    done = done_ok + failed
    now = time.time()
    # Server timestamps survive a resume; local elapsed is the fallback when they are absent or skewed.
    created = batch.get("created_at")
    elapsed = now - created if isinstance(created, (int, float)) and 0 <= now - created < 7 * 86400 else elapsed_s
    started = batch.get("in_progress_at")
    run_s = now - started if isinstance(started, (int, float)) and 0 <= now - started <= elapsed else elapsed
    eta = None
    if batch.get("status") in TERMINAL_STATUSES:
        eta = 0.0
    elif 0 < done and total:
        eta = run_s * (total - done) / done
    return {"batch_id": batch.get("id"), "status": batch.get("status"), "total": total, "completed": done_ok,
            "failed": failed, "elapsed_s": round(elapsed, 3), "eta_s": None if eta is None else round(eta, 3),
            "polls": polls}
