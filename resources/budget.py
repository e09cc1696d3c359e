"""A spend cap that holds across runs, partitions and processes sharing one store.

The cap covers what the ledger (`teacher_calls`) already records for the budget scope (by default the role:
teacher, judge, eval judge) plus what live sessions have reserved. A session claims headroom for its calls in
flight in one transaction under the store's lock, so two runs cannot both spend the same last dollar; a call
goes out only inside a claimed grant. Concurrent runs overshoot the cap by at most the difference between
their calls' estimated and actual cost.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import timedelta

from resources.clock import utcnow
from resources.store import DuckDBStore

STALE_AFTER = timedelta(minutes=15)  # a reservation nobody refreshed for this long belongs to a dead run


@dataclass
class BudgetStatus:
    scope: str
    spent_usd: float
    spent_tokens: int
    max_usd: float | None
    max_tokens: int | None

    @property
    def remaining_usd(self) -> float | None:
        return None if self.max_usd is None else max(0.0, self.max_usd - self.spent_usd)

    @property
    def remaining_tokens(self) -> int | None:
        return None if self.max_tokens is None else max(0, self.max_tokens - self.spent_tokens)

    def as_dict(self) -> dict:
        return {"scope": self.scope, "spent_usd": round(self.spent_usd, 6), "spent_tokens": self.spent_tokens,
                "max_usd": self.max_usd, "max_tokens": self.max_tokens,
                "remaining_usd": None if self.remaining_usd is None else round(self.remaining_usd, 6),
                "remaining_tokens": self.remaining_tokens}


def _alive(pid: int, host: str) -> bool:
    if host != socket.gethostname():
        return True  # another machine's run: only its age can tell
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SharedBudget:
    """The cap of one scope; `reserve` before a call, `release` once it is journaled (see module docstring)."""

    def __init__(self, store: DuckDBStore, *, role: str, scope: str | None, max_usd: float | None,
                 max_tokens: int | None, usd_var: str = "MAX_BUDGET_USD", tokens_var: str = "MAX_TOTAL_TOKENS",
                 claim_calls: int = 16):
        self.store, self.role, self.scope = store, role, scope or role
        self.max_usd, self.max_tokens = max_usd, max_tokens
        self.usd_var, self.tokens_var = usd_var, tokens_var
        self.claim_calls = max(1, claim_calls)
        self.session_id = uuid.uuid4().hex
        self.pid, self.host = os.getpid(), socket.gethostname()
        self._lock = threading.Lock()
        self.grant_usd = 0.0  # claimed in the store and not yet used by a call
        self.grant_tokens = 0
        self.inflight_usd = 0.0  # estimates of calls sent and not yet journaled
        self.inflight_tokens = 0
        self.exhausted: str | None = None

    @property
    def active(self) -> bool:
        return self.max_usd is not None or self.max_tokens is not None

    def _spent(self, conn) -> tuple[float, int]:
        row = conn.execute(
            "SELECT coalesce(sum(cost_usd), 0), coalesce(sum(prompt_tokens + completion_tokens), 0) "
            "FROM teacher_calls WHERE coalesce(budget_scope, role) = ?", [self.scope]).fetchall()[0]
        return float(row[0]), int(row[1])

    def _others(self, conn) -> tuple[float, int]:
        rows = conn.execute(
            "SELECT session_id, pid, host, reserved_usd, reserved_tokens, updated_at FROM budget_reservations "
            "WHERE scope = ? AND session_id <> ?", [self.scope, self.session_id]).fetchall()
        usd, tokens, dead = 0.0, 0, []
        now = utcnow()
        for sid, pid, host, r_usd, r_tok, updated in rows:
            if now - updated > STALE_AFTER or not _alive(int(pid), str(host)):
                dead.append(sid)
                continue
            usd, tokens = usd + float(r_usd), tokens + int(r_tok)
        for sid in dead:
            conn.execute("DELETE FROM budget_reservations WHERE session_id = ?", [sid])
        return usd, tokens

    def _write(self, conn) -> None:
        conn.execute("DELETE FROM budget_reservations WHERE session_id = ?", [self.session_id])
        conn.execute(
            "INSERT INTO budget_reservations VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [self.session_id, self.scope, self.role, self.pid, self.host,
             self.grant_usd + self.inflight_usd, self.grant_tokens + self.inflight_tokens, utcnow()])

    def status(self) -> BudgetStatus:
        with self.store.connect() as conn:
            usd, tokens = self._spent(conn)
        return BudgetStatus(self.scope, usd, tokens, self.max_usd, self.max_tokens)

    def _claim(self, est_usd: float, est_tokens: int) -> bool:
        """Claim headroom for up to `claim_calls` calls like this one; False when not even one fits."""
        before = (self.grant_usd, self.grant_tokens, self.exhausted)

        def claim(conn) -> bool:  # may run again after a lake commit conflict: start from the same state
            self.grant_usd, self.grant_tokens, self.exhausted = before
            return self._claim_in(conn, est_usd, est_tokens)

        return self.store.transact(claim)

    def _claim_in(self, conn, est_usd: float, est_tokens: int) -> bool:
        spent_usd, spent_tokens = self._spent(conn)
        other_usd, other_tokens = self._others(conn)
        mine_usd, mine_tokens = self.grant_usd + self.inflight_usd, self.grant_tokens + self.inflight_tokens
        free_usd = None if self.max_usd is None else self.max_usd - spent_usd - other_usd - mine_usd
        free_tokens = None if self.max_tokens is None else self.max_tokens - spent_tokens - other_tokens - mine_tokens
        if (free_usd is not None and free_usd < est_usd) or (free_tokens is not None and free_tokens < est_tokens):
            self.exhausted = self._message(spent_usd, spent_tokens, other_usd, other_tokens)
            self._write(conn)
            return False
        n = self.claim_calls
        if free_usd is not None and est_usd > 0:
            n = min(n, int(free_usd // est_usd))
        if free_tokens is not None and est_tokens > 0:
            n = min(n, int(free_tokens // est_tokens))
        n = max(1, n)
        self.grant_usd += n * est_usd
        self.grant_tokens += n * est_tokens
        self._write(conn)
        return True

    def _message(self, spent_usd: float, spent_tokens: int, other_usd: float, other_tokens: int) -> str:
        parts = []
        if self.max_usd is not None:
            parts.append(f"{self.usd_var}={self.max_usd:g}: ${spent_usd:.4f} spent")
        if self.max_tokens is not None:
            parts.append(f"{self.tokens_var}={self.max_tokens}: {spent_tokens} tokens spent")
        held = f", ${other_usd:.4f} / {other_tokens} tokens reserved by runs in flight" if other_usd or other_tokens else ""
        return (f"budget of scope {self.scope!r} reached ({'; '.join(parts)}{held}) across every run recorded in "
                f"this store; no new calls are sent. Raise the cap or use another budget scope to go on.")

    def reserve(self, est_usd: float, est_tokens: int) -> bool:
        """Take one call's estimate from the grant (claiming more from the store when it runs out)."""
        if not self.active:
            return True
        with self._lock:
            if self.exhausted:
                return False
            if self.grant_usd + 1e-12 < est_usd or self.grant_tokens < est_tokens:
                if not self._claim(est_usd, est_tokens):
                    return False
            self.grant_usd -= est_usd
            self.grant_tokens -= est_tokens
            self.inflight_usd += est_usd
            self.inflight_tokens += est_tokens
            return True

    def release(self, est_usd: float, est_tokens: int) -> None:
        """The call's estimate leaves the reservation: its real cost is (or is about to be) in the ledger."""
        if not self.active:
            return
        with self._lock:
            self.inflight_usd = max(0.0, self.inflight_usd - est_usd)
            self.inflight_tokens = max(0, self.inflight_tokens - est_tokens)

    def heartbeat(self) -> None:
        """Re-date this session's reservation: a batch job can be polled for hours, longer than STALE_AFTER."""
        if not self.active:
            return
        with self._lock:
            self.store.transact(self._write)

    def close(self) -> None:
        if not self.active:
            return
        self.store.transact(lambda conn: conn.execute("DELETE FROM budget_reservations WHERE session_id = ?",
                                                      [self.session_id]))
