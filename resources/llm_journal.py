"""The crash-safe call journal: each result is appended the moment it arrives; dead sessions' journals are
replayed into `teacher_calls` by the next session."""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from pathlib import Path

import pandas as pd

from resources.clock import parse_utc
from resources.llm_logprobs import JOURNAL_KEY, logprob_frame
from resources.llm_types import OK
from resources.store import DuckDBStore, insert_df


class _Journal:
    """Append-only JSONL of results not yet in DuckDB, held under an flock while its writer lives."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"calls-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self.fh = open(self.path, "a", encoding="utf-8")
        fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX)

    def append(self, row: dict) -> None:
        # flushed to the OS at once: a kill -9 of this process loses nothing already written
        self.fh.write(json.dumps(row, default=str) + "\n")
        self.fh.flush()

    def close(self, delete: bool) -> None:
        self.fh.close()
        if delete:
            self.path.unlink(missing_ok=True)


def replay_journals(store: DuckDBStore, directory: Path) -> int:
    """Move the rows of journals left by dead sessions into teacher_calls; returns the rows recovered."""
    if not directory.exists():
        return 0
    recovered = 0
    for path in sorted(directory.glob("calls-*.jsonl")):
        try:
            fh = open(path, encoding="utf-8")
        except FileNotFoundError:
            continue
        with fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its writer is alive
            rows = []
            for line in fh:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line torn by the kill; that call is simply made again
            if rows:
                frame = pd.DataFrame(rows).drop(columns=[JOURNAL_KEY], errors="ignore")
                frame["created_at"] = parse_utc(frame["created_at"])
                calls, logprobs = _latest_per_key(frame), logprob_frame(rows)
                store.transact(lambda conn, c=calls, lp=logprobs: (
                    insert_df(conn, "teacher_calls", c, on_conflict="replace"),
                    insert_df(conn, "teacher_logprobs", lp, on_conflict="replace")))
                recovered += len(rows)
        path.unlink(missing_ok=True)
    return recovered


def _latest_per_key(frame: pd.DataFrame) -> pd.DataFrame:
    # an ok answer must never be overwritten by a later failure of the same key
    frame = frame.assign(_ok=(frame["status"] == OK).astype(int))
    return frame.sort_values(["_ok", "created_at"]).drop_duplicates("call_key", keep="last").drop(columns="_ok")


LEDGER_COLUMNS = [
    "call_key", "model", "role", "status", "response", "finish_reason", "prompt_tokens", "completion_tokens",
    "cost_usd", "latency_s", "attempts", "error", "category", "run_id", "request_json", "created_at", "budget_scope",
    "tool_calls",
]
