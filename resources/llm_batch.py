"""Batch mode: the uncached requests of one complete() go out as one OpenAI Batch API job, at the batch price.

Each job is recorded in `teacher_batches` (batch id, call keys) before its first poll, so a run killed while it
waits, started again, finds the open job that holds its pending call keys and follows it instead of buying the
answers twice. Answers go through the session's journal into `teacher_calls` under the online call keys, read
by the same parser as online answers, priced at online price x `batch_discount`. Lines that failed (error file,
non-200, empty, malformed) and requests the job never ran (expired, cancelled, failed validation) are retried
online through the session's retrying HTTP path: a follow-up batch could take another 24 h for the few left.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from typing import TYPE_CHECKING

from resources.batch import (
    BatchAuthError,
    BatchClient,
    BatchError,
    BatchOutcome,
    BatchRequest,
    BatchTimeout,
    redact_url,
    split_for_limits,
)
from resources.clock import utcnow
from resources.llm_http import _Progress, _run_async, parse_completion
from resources.llm_types import ChatRequest, ChatResult, LLMAuthError, LLMUnavailableError

if TYPE_CHECKING:  # annotations only: the session calls in here
    from resources.llm_session import LLMSession

LOG_EVERY_S = 30.0  # progress lines while the counts move; a status change is logged at once
HEARTBEAT_S = 300.0  # re-date the budget reservation (stale after 15 min) and the ledger row at least this often


class _Stopped(Exception):
    """The caller gave up (interrupt, another job's error): the polling thread stops; the job keeps running."""


def run_batch(session: LLMSession, requests: list[ChatRequest], keys: list[str], tracker: _Progress,
              category: str | None, label: str) -> list[ChatResult]:
    """Results of `requests` (unique, uncached, keyed by `keys`) in order, through the Batch API."""
    return _BatchRun(session, tracker, category, label).run(requests, keys)


class _BatchRun:
    def __init__(self, session: LLMSession, tracker: _Progress, category: str | None, label: str):
        self.s, self.tracker, self.category, self.label = session, tracker, category, label
        cfg = session.cfg
        self.url = redact_url(session.base_url or "")
        # proxies as the online path honours them (HTTP(S)_PROXY / NO_PROXY)
        self.client = BatchClient(session.base_url, cfg.api_key, timeout_s=cfg.request_timeout_s,
                                  poll_interval_s=cfg.batch_poll_interval_s,
                                  max_poll_interval_s=cfg.batch_max_poll_interval_s, headers=cfg.headers(),
                                  key_env_name=cfg.key_variable, max_retries=cfg.max_retries,
                                  max_wait_s=cfg.batch_max_wait_s, trust_env=True)
        self.stop = threading.Event()
        self.seen: dict[str, tuple] = {}  # batch id -> (status, counts, logged at)
        self.category_of: dict[str, str | None] = {}

    # the ledger row -------------------------------------------------------------------------------------------
    def _open_batches(self, wanted: set[str]) -> list[tuple[str, list[str]]]:
        """Open jobs of this endpoint and model holding any of `wanted`, still known to the server."""
        rows = self.s.store.query_df(
            "SELECT batch_id, category, call_keys FROM teacher_batches WHERE completed_at IS NULL AND role = ? "
            "AND model = ? AND base_url = ? ORDER BY created_at", [self.s.cfg.role, self.s.model, self.url])
        out = []
        for r in rows.itertuples(index=False):
            held = json.loads(r.call_keys)
            if wanted.isdisjoint(held):
                continue  # another category's or run's job
            try:
                self.client.retrieve(r.batch_id)
            except BatchError as e:
                if e.status != 404:
                    raise self._error(e) from None
                self.s.log.warning(f"{self.label}: batch {r.batch_id} is recorded as open but {self.url} does not "
                                   "know it; its requests are submitted again")
                self._finish_row(r.batch_id, "lost", None)
                continue
            self.category_of[r.batch_id] = r.category
            out.append((r.batch_id, held))
        return out

    def _submitted(self, batch_id: str, file_id: str, ids: list[str]) -> None:
        """Runs before the first poll (BatchClient.run): from here on a rerun resumes this job."""
        now = utcnow()
        self.s.store.transact(lambda conn: conn.execute(
                "INSERT INTO teacher_batches (batch_id, role, model, base_url, category, run_id, input_file_id, "
                "call_keys, status, created_at, updated_at, completed_at, counts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'submitted', ?, ?, NULL, NULL)",
                [batch_id, self.s.cfg.role, self.s.model, self.url, self.category, self.s.run_id, file_id,
                 json.dumps(ids), now, now]))
        self.category_of[batch_id] = self.category
        self.s.log.info(f"{self.label}: submitted batch {batch_id} ({len(ids)} request(s), input file {file_id}) "
                        f"to {self.url}")

    def _finish_row(self, batch_id: str, status: str, counts: dict | None) -> None:
        now = utcnow()
        self.s.store.execute("UPDATE teacher_batches SET status = ?, counts = ?, updated_at = ?, completed_at = ? "
                             "WHERE batch_id = ?", [status, json.dumps(counts) if counts else None, now, now, batch_id])

    def _progress(self, p: dict) -> None:
        if self.stop.is_set():
            raise _Stopped(p["batch_id"])
        bid, now = p["batch_id"], time.monotonic()
        counts = {k: p[k] for k in ("total", "completed", "failed")}
        last = self.seen.get(bid)
        if last is not None and last[0] == p["status"] and (
                now - last[2] < (LOG_EVERY_S if last[1] != counts else HEARTBEAT_S)):
            return
        self.seen[bid] = (p["status"], counts, now)
        done = p["completed"] + p["failed"]
        eta = "unknown" if p["eta_s"] is None else f"{p['eta_s']:.0f}s"
        self.s.log.info(f"{self.label}: batch {bid} {p['status']}: {done}/{p['total']} done, {p['failed']} failed, "
                        f"{p['elapsed_s']:.0f}s elapsed, ETA {eta}")
        self.s.store.execute("UPDATE teacher_batches SET status = ?, counts = ?, updated_at = ? WHERE batch_id = ?",
                             [p["status"], json.dumps(counts), utcnow(), bid])
        self.s.budget.heartbeat()

    def _error(self, e: BatchError) -> Exception:
        if isinstance(e, BatchAuthError):
            return LLMAuthError(str(e))
        if isinstance(e, BatchTimeout):
            return LLMUnavailableError(f"{self.label}: {e}. Run again to go on waiting for it.")
        hint = (" (this server has no Batch API: vLLM's OpenAI server serves none, use `vllm run-batch` or "
                f"{self.s.cfg.env_prefix or self.s.cfg.role.upper()}_MODE=online)" if e.status in (404, 405) else "")
        return LLMUnavailableError(f"{self.label}: Batch API call failed: {e}{hint}. Open jobs are resumed by a rerun.")

    # the run --------------------------------------------------------------------------------------------------
    def run(self, requests: list[ChatRequest], keys: list[str]) -> list[ChatResult]:
        s, by_key = self.s, dict(zip(keys, requests))
        results: dict[str, ChatResult] = {}
        jobs: list[tuple[list[BatchRequest], str | None]] = []
        covered: set[str] = set()
        for batch_id, held in self._open_batches(set(keys)):
            mine = [k for k in held if k in by_key]
            s.log.info(f"{self.label}: resuming batch {batch_id} submitted earlier ({len(mine)} of this phase's "
                       f"{len(keys)} request(s)); nothing is submitted again")
            jobs.append(([BatchRequest(k, s.body(by_key[k]) if k in by_key else {}) for k in held], batch_id))
            covered.update(held)
        estimates: dict[str, tuple[float, int]] = {}
        new: list[BatchRequest] = []
        for k, req in zip(keys, requests):
            if k in covered:
                continue  # already bought: the cap was checked when it was submitted
            est = s._reserve(req, batch=True)
            if est is None:
                results[k] = ChatResult(k, s.model, "budget_exceeded", error=s.budget_hit)
                s._record(results[k], req, self.category)
                self.tracker.step(results[k])
                continue
            estimates[k] = est
            new.append(BatchRequest(k, s.body(req)))
        jobs += [(chunk, None) for chunk in split_for_limits(new, s.cfg.batch_max_requests, s.cfg.batch_max_bytes)]
        retry = self._follow_all(jobs, by_key, estimates, results)
        if retry:
            s.log.info(f"{self.label}: {len(retry)} request(s) failed or did not run in the batch; retrying them "
                       f"online (up to {s.cfg.max_retries} retries each, at the online price)")
            results.update(zip(retry, _run_async(s._run_openai([by_key[k] for k in retry], retry, self.tracker,
                                                                self.category))))
        return [results[k] for k in keys]

    def _follow_all(self, jobs: list, by_key: dict, estimates: dict, results: dict) -> list[str]:
        """Submit and poll every job at once (daemon threads: a failed or interrupted run exits without waiting
        for them); collect each as it ends. Returns the keys to retry online."""
        done: queue.Queue = queue.Queue()

        def follow(reqs: list[BatchRequest], resume_id: str | None) -> None:
            try:
                done.put(self.client.run(reqs, on_submitted=self._submitted, resume_batch_id=resume_id,
                                         on_progress=self._progress,
                                         metadata={"distill_role": self.s.cfg.role,
                                                   "distill_category": self.category or "",
                                                   "distill_run": self.s.run_id}))
            except BaseException as e:  # handed to the caller's thread
                done.put(e)

        for reqs, resume_id in jobs:
            threading.Thread(target=follow, args=(reqs, resume_id), daemon=True, name="distill-batch").start()
        retry: list[str] = []
        try:
            for _ in jobs:
                outcome = done.get()
                if isinstance(outcome, BatchError):
                    raise self._error(outcome) from None
                if isinstance(outcome, BaseException):
                    raise outcome
                retry += self._collect(outcome, by_key, estimates, results)
        finally:
            self.stop.set()  # jobs still polling stop; they stay open in teacher_batches and a rerun resumes them
        return list(dict.fromkeys(k for k in retry if k not in results))

    def _collect(self, outcome: BatchOutcome, by_key: dict, estimates: dict, results: dict) -> list[str]:
        """Journal the answers of one ended job, mark it collected; return its keys to retry online."""
        s, b = self.s, outcome.batch
        ends = [b.get(k) for k in ("completed_at", "expired_at", "failed_at", "cancelled_at")]
        end = next((t for t in ends if isinstance(t, (int, float))), time.time())
        latency = max(0.0, end - b["created_at"]) if isinstance(b.get("created_at"), (int, float)) else 0.0
        retry, answered, failed, orphans = [], 0, 0, []
        for cid, item in outcome.results.items():
            if cid in results:
                continue  # answered by another job that held the same key
            res = (s._result(cid, parse_completion(item.body), latency, 1, estimates.get(cid), batch=True) if item.ok
                   else ChatResult(cid, s.model, "error", latency_s=latency, attempts=1, error=item.error))
            if cid not in by_key:
                if res.ok:
                    orphans.append(res)
            elif res.ok:
                answered += 1
                results[cid] = res
                s._record(res, by_key[cid], self.category, estimate=estimates.get(cid))
                self.tracker.step(res)
            else:
                failed += 1
                retry.append(cid)
        # bought by an earlier run for a request this run no longer makes: kept, unless already answered
        known = s.cached([r.call_key for r in orphans])
        for res in orphans:
            if res.call_key not in known:
                s._record(res, None, self.category_of.get(outcome.batch_id))
        missing = [k for k in outcome.missing if k in by_key and k not in results]
        retry += missing
        s.flush()  # the answers are durable before the job is marked collected
        for k in retry:
            if k in estimates:  # the online retry reserves its own, at the online price
                s.budget.release(*estimates.pop(k))
        counts = {**(b.get("request_counts") or {}), "answered": answered, "failed_lines": failed,
                  "not_run": len(missing), "kept_from_earlier_run": len(orphans) - len(known)}
        self._finish_row(outcome.batch_id, outcome.status, counts)
        msg = (f"{self.label}: batch {outcome.batch_id} {outcome.status}: {answered} answered at the batch price, "
               f"{failed} failed, {len(missing)} not run")
        (s.log.warning if outcome.errors or outcome.status != "completed" else s.log.info)(
            msg + (f"; errors: {'; '.join(outcome.errors[:5])}" if outcome.errors else ""))
        return retry
