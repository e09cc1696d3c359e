"""`verified` (filter 4 of 5): check what can be checked, so no incorrect example is trained on.

Per the category's `verify` kind: math answers against the seed's reference (or a self-consistency majority
over the samples of the same problem when there is none), labels against the reference, code by running the
row's tests in the sandbox, tool calls against the category's function schemas and the seed's expected call
(lib/verification/tools.py: every assistant turn's calls must be valid; the last turn's must match the expected
one). Four states in `verification_status`: pass, fail, unverifiable, infra_error.
An infra_error (the sandbox could not run) is never a pass or a fail: the row is quarantined with reason
`verify_infra_error`, so a rerun once the sandbox works can still use it.
"""


import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pandas as pd

from distill_assets.lib import conversation as conv
from distill_assets.lib.stages import annotate
from distill_assets.lib.tasks import Category
from distill_assets.lib.verification.code import extract_code
from distill_assets.lib.verification.labels import labels_match, parse_label, verify_label
from distill_assets.lib.verification.math import (
    answers_match,
    extract_final_answer,
    majority_verdicts,
    verify_math,
    vote,
)
from distill_assets.lib.verification.sandbox import SandboxResult, SandboxUnavailable, run_code_tests
from distill_assets.lib.verification.tools import expected_call, message_calls, verify_calls

PASS, FAIL, UNVERIFIABLE, INFRA = "pass", "fail", "unverifiable", "infra_error"


@dataclass
class RowVerdict:
    status: str
    reason: str
    answer: str | None = None
    evidence: dict = field(default_factory=dict)


def _ref(v) -> str | None:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return None
    s = str(v).strip()
    return s or None


def _tests(v) -> list[str]:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return []
    if isinstance(v, list):
        return [str(t) for t in v]
    try:
        out = json.loads(v)
    except (TypeError, ValueError):
        return []
    return [str(t) for t in out] if isinstance(out, list) else []


def _group_key(row: dict) -> tuple:
    return (row.get("seed_id"), (row.get("instruction") or "").strip())


def _consistency(rows: list[dict], extract: Callable[[str], str | None], match,
                 min_agree: float = 0.5) -> dict[int, RowVerdict]:
    """Self-consistency for rows without a reference, grouped by (seed_id, instruction)."""
    out = {}
    voted = [i for i, r in enumerate(rows) if _votes(r) is not None]
    for i in voted:  # the teacher's own samples, recorded at generation before dedup merged equal answers
        votes = [extract(v) for v in _votes(rows[i])]
        mine = extract(rows[i]["response"])
        status, reason, detail = vote(mine, votes, match, min_agree)
        out[i] = RowVerdict(status, reason, mine, {"mode": "self_consistency", "rule": "sample_votes",
                                                   "extracted": mine, **detail})
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        if i not in out:
            groups.setdefault(_group_key(r), []).append(i)
    for idx in groups.values():  # rows without recorded votes: the surviving siblings vote
        answers = [extract(rows[i]["response"]) for i in idx]
        for i, (status, reason, detail) in zip(idx, majority_verdicts(answers, match, min_agree)):
            out[i] = RowVerdict(status, reason, answers[idx.index(i)],
                                {"mode": "self_consistency", "rule": "surviving_samples",
                                 "extracted": answers[idx.index(i)], **detail})
    return out


def _votes(row: dict) -> list[str] | None:
    raw = row.get("sample_answers")
    if not isinstance(raw, str) or not raw:
        return None
    try:
        votes = json.loads(raw)
    except ValueError:
        return None
    return [str(v) for v in votes] if isinstance(votes, list) and votes else None


def _against_reference(rows: list[dict], check: Callable, extract: Callable[[str], str | None], match,
                       min_agree: float, extra: dict | None = None) -> list[RowVerdict]:
    """Rows with a reference are checked against it; rows without one are decided by self-consistency."""
    out: list[RowVerdict | None] = [None] * len(rows)
    no_ref = []
    for i, r in enumerate(rows):
        ref = _ref(r.get("reference"))
        if ref is None:
            no_ref.append(i)
            continue
        v = check(r["response"] or "", ref)
        out[i] = RowVerdict(v.status, v.reason, v.answer, {"mode": "reference", "extracted": v.answer,
                                                           "extract_method": v.method, "reference": ref,
                                                           **(extra or {})})
    sub = [rows[i] for i in no_ref]
    for j, v in _consistency(sub, extract, match, min_agree).items():
        out[no_ref[j]] = v
    return out  # type: ignore[return-value]


def _math(rows: list[dict], min_agree: float = 0.5) -> list[RowVerdict]:
    return _against_reference(rows, verify_math, lambda t: extract_final_answer(t).answer, answers_match, min_agree)


def _label(rows: list[dict], labels: list[str], min_agree: float = 0.5) -> list[RowVerdict]:
    return _against_reference(rows, lambda resp, ref: verify_label(resp, ref, labels),
                              lambda t: parse_label(t, labels).label, labels_match, min_agree, {"labels": labels})


def _code_one(r: dict, cat: Category, sandbox) -> RowVerdict:
    tests = _tests(r.get("tests"))
    source = r.get("tests_source") or ("given" if tests else None)
    ep = _ref(r.get("entry_point"))
    if not tests:
        return RowVerdict(UNVERIFIABLE, "verify_no_tests", None, {"mode": "sandbox", "tests_source": source})
    code = extract_code(r.get("response"), ep)
    if code is None:
        return RowVerdict(FAIL, "verify_no_code", None, {"mode": "sandbox", "entry_point": ep})
    res: SandboxResult = sandbox(code, tests, ep, timeout_s=cat.filters.verify_timeout_s,
                                 memory_mb=cat.filters.verify_memory_mb, isolation=cat.filters.verify_isolation)
    ev = {"mode": "sandbox", "entry_point": ep, "code_chars": len(code), "status": res.status,
          "passed": res.passed, "failed": res.failed, "unverifiable": res.unverifiable, "total": res.total,
          "sandbox_reason": res.reason, "isolation": res.isolation, "network_isolation": res.network_isolation,
          "privileges": res.privileges, "duration_s": res.duration, "stderr_tail": res.stderr_tail[-500:],
          "tests": res.tests[:20], "tests_source": source, "limits": res.limits}
    if res.status == "pass":
        return RowVerdict(PASS, "ok", None, ev)
    if res.status == "unverifiable":
        return RowVerdict(UNVERIFIABLE, "verify_tests_unsplittable", None, ev)
    if res.status == "timeout":
        return RowVerdict(FAIL, "verify_timeout", None, ev)
    if res.status == "infra_error":
        return RowVerdict(INFRA, "verify_infra_error", None, ev)
    return RowVerdict(FAIL, "verify_tests_failed", None, ev)


def _code(rows: list[dict], cat: Category, sandbox) -> list[RowVerdict]:
    def one(r):
        try:
            return _code_one(r, cat, sandbox)
        except SandboxUnavailable:
            raise  # no isolation here: stop verification, never run the code unguarded
        except Exception as e:  # our harness broke: never the row's fault
            return RowVerdict(INFRA, "verify_infra_error", None, {"mode": "sandbox", "error": repr(e)[:500]})

    with ThreadPoolExecutor(max_workers=cat.filters.verify_workers) as pool:
        return list(pool.map(one, rows))


def _tool_one(r: dict, tools: list[dict] | None) -> RowVerdict:
    msgs = conv.loads(r.get("messages")) or []
    turns = [(i, m) for i, m in enumerate(msgs) if m.get("role") == "assistant"]
    if not turns:
        return RowVerdict(FAIL, "tool_call_missing", None, {"mode": "tool_call", "error": "no assistant turn"})
    # earlier turns: any call they make must be valid; the last turn is also held to the expected call
    for k, (i, m) in enumerate(turns[:-1], start=1):
        v = verify_calls(message_calls(m), tools, None)
        if v.status == "fail":
            return RowVerdict(FAIL, v.reason, None, {"mode": "tool_call", "turn": i, "assistant_turn": k, **v.detail})
    i, last = turns[-1]
    expected = expected_call(r.get("reference"))
    v = verify_calls(message_calls(last), tools, expected)
    answer = json.dumps(v.detail.get("calls"), ensure_ascii=False) if v.status == PASS else None
    return RowVerdict(v.status, v.reason, answer, {"mode": "tool_call", "turn": i, "assistant_turn": len(turns),
                                                    "expected": expected, **v.detail})


def keep_unverifiable(cat: Category) -> bool:
    """Whether rows the verifier cannot check are trained on: never untested code, unless the task says so."""
    flag = cat.filters.keep_unverifiable
    return flag if flag is not None else cat.verify != "code"


def verify_rows(df: pd.DataFrame, cat: Category, sandbox=run_code_tests) -> list[RowVerdict]:
    rows = df.to_dict("records")
    min_agree = cat.filters.self_consistency_min_agree
    if cat.verify == "math":
        return _math(rows, min_agree)
    if cat.verify == "label":
        return _label(rows, list(cat.labels or []), min_agree)
    if cat.verify == "code":
        return _code(rows, cat, sandbox)
    if cat.verify == "tool_call":
        return [_tool_one(r, cat.tools_json()) for r in rows]
    return [RowVerdict(UNVERIFIABLE, "not_verifiable_task", None, {"mode": "none"}) for _ in rows]


def apply_verification(df: pd.DataFrame, cat: Category, sandbox=run_code_tests) -> pd.DataFrame:
    """Annotate every row with its verification verdict (pure: no Dagster, no store)."""
    verdicts = verify_rows(df, cat, sandbox) if not df.empty else []
    out = df.copy()
    out["verification_status"] = pd.Series([v.status for v in verdicts], index=out.index, dtype="object")
    out["verification_answer"] = pd.Series([v.answer for v in verdicts], index=out.index, dtype="object")
    keep, reason, evidence, quarantined = [], [], [], []
    for v in verdicts:
        if v.reason == "not_verifiable_task":
            k = True
        elif v.status == UNVERIFIABLE:
            k = keep_unverifiable(cat)
        else:
            k = v.status == PASS
        keep.append(k)
        quarantined.append(v.status == INFRA)
        reason.append(v.reason if v.status != PASS else "ok")
        evidence.append({"verify": cat.verify, "verification_status": v.status, **v.evidence})
    return annotate(out, keep, reason, evidence, quarantined)
