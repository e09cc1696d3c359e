"""LLM-as-judge pairwise comparison, judged in BOTH orders so the judge's position bias cancels.

For each pair (candidate, opponent) the judge sees A=candidate/B=opponent and A=opponent/B=candidate. Each
order yields the candidate's score (win 1, tie 0.5, loss 0); the pair's score is the mean of the two, so a
judge that always prefers position A scores every pair 0.5 (a tie). A pair is *consistent* when both orders
give the candidate the same outcome. A verdict that cannot be parsed is its own state (`unparseable`), never
turned into a loss or a tie, and a judge call that failed is `judge_error`; both are left out of win rates
and reported separately. Verdicts go through the LLM call cache, so a rerun re-asks nothing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from distill_assets.lib.evaluation.metrics import bootstrap_ci
from distill_assets.lib.evaluation.signal import OK as SIGNAL_OK
from distill_assets.lib.evaluation.signal import judge_signal
from resources.llm import ChatRequest

# The pairwise judge prompt (the usual Step 3 evaluate.py one), asking for a short rationale first so that the failure
# analysis can show why a pair was lost, then the winner. The answer is a JSON object sent as structured output
# (VERDICT_SCHEMA), so even a small judge answers readably; a "Winner: X" line is read too, for servers
# without structured output.
JUDGE_PROMPT = """Compare these two responses to the same prompt.

Prompt: {prompt}

Response A: {response_a}

Response B: {response_b}

Which response is better? Consider accuracy, helpfulness, and clarity.
Give a one-sentence reason, then the winner: A, B, or tie.
Answer with JSON only, like {{"reason": "one sentence", "winner": "A"}}"""


def verdict_schema(max_tokens: int) -> dict:
    """Reason first (the judge reasons before it decides), short enough that "winner" fits in max_tokens."""
    return {
        "type": "object",
        "properties": {"reason": {"type": "string", "maxLength": max(16, (max_tokens - 16) * 2)},
                       "winner": {"type": "string", "enum": ["A", "B", "tie"]}},
        "required": ["reason", "winner"],
        "additionalProperties": False,
    }

WIN, TIE, LOSS = "win", "tie", "loss"
UNPARSEABLE, JUDGE_ERROR = "unparseable", "judge_error"
ORDERS = ("ab", "ba")  # ab: candidate is A; ba: candidate is B

_WINNER_LINE = re.compile(r"winner\s*[:\-]?\s*\**\s*(response\s+)?(a|b|tie|draw)\b", re.IGNORECASE)
_JSON_WINNER = re.compile(r'"winner"\s*:\s*"\s*(?:response\s+)?(a|b|tie|draw)\s*"', re.IGNORECASE)
_BARE = re.compile(r"^\W*(?:response\s+)?(a|b|tie|draw)\W*$", re.IGNORECASE)


def parse_verdict(text: str | None) -> str | None:
    """'A', 'B' or 'tie' from a judge answer; None when it cannot be read.

    A JSON `"winner": "X"` (the structured answer) is read first. Otherwise the last explicit "Winner: X" wins
    (a rationale may mention both letters). Without one, only an answer
    that is nothing but the letter or 'tie' counts -- never a substring search like the usual evaluate.py's
    `if "a" in result`, which reads any word containing an 'a' as a win.
    """
    if not text or not text.strip():
        return None
    hits = _WINNER_LINE.findall(text)
    json_hits = _JSON_WINNER.findall(text)
    if json_hits:
        v = json_hits[-1].lower()
    elif hits:
        v = hits[-1][1].lower()
    else:
        m = _BARE.match(text.strip().splitlines()[-1]) if text.strip() else None
        if not m:
            return None
        v = m.group(1).lower()
    return {"a": "A", "b": "B", "tie": "tie", "draw": "tie"}[v]


def candidate_score(verdict: str | None, order: str) -> float | None:
    """The candidate's score for one order's verdict (None when unparseable)."""
    if verdict is None:
        return None
    if verdict == "tie":
        return 0.5
    candidate_letter = "A" if order == "ab" else "B"
    return 1.0 if verdict == candidate_letter else 0.0


def _outcome(score: float) -> str:
    return WIN if score > 0.5 else (LOSS if score < 0.5 else TIE)


def judge_messages(prompt: str, response_a: str, response_b: str) -> list[dict]:
    return [{"role": "user", "content": JUDGE_PROMPT.format(prompt=prompt, response_a=response_a or "",
                                                           response_b=response_b or "")}]


def build_requests(pairs: pd.DataFrame, max_tokens: int = 256) -> list[ChatRequest]:
    """Two greedy judge requests per pair (orders ab and ba). pairs: pair_id, prompt, candidate_response,
    opponent_response. The tag is (pair_id, order)."""
    reqs = []
    for p in pairs.itertuples(index=False):
        for order in ORDERS:
            a, b = ((p.candidate_response, p.opponent_response) if order == "ab"
                    else (p.opponent_response, p.candidate_response))
            reqs.append(ChatRequest(messages=judge_messages(p.prompt, a, b), temperature=0.0, max_tokens=max_tokens,
                                    sample_index=0, json_schema=verdict_schema(max_tokens), schema_name="verdict",
                                    tag=(p.pair_id, order)))
    return reqs


def combine(pairs: pd.DataFrame, answers: dict[tuple[str, str], tuple[str, str | None]]) -> pd.DataFrame:
    """Fold the two orders of each pair into one verdict.

    answers: (pair_id, order) -> (call status, judge text). Returns pairs plus verdict_ab, verdict_ba (A|B|tie|
    None), score_ab, score_ba, judge_score (mean, NaN unless both parsed), judge_verdict (win|tie|loss|
    unparseable|judge_error), consistent (bool or None), rationale_ab, rationale_ba.
    """
    out = []
    for p in pairs.to_dict("records"):
        row = dict(p)
        statuses, scores = [], []
        for order in ORDERS:
            status, text = answers.get((p["pair_id"], order), ("error", None))
            v = parse_verdict(text) if status == "ok" else None
            s = candidate_score(v, order)
            row[f"verdict_{order}"] = v
            row[f"score_{order}"] = s
            row[f"rationale_{order}"] = text
            statuses.append(status)
            scores.append(s)
        if any(st != "ok" for st in statuses):
            row.update(judge_score=float("nan"), judge_verdict=JUDGE_ERROR, consistent=None)
        elif any(s is None for s in scores):
            row.update(judge_score=float("nan"), judge_verdict=UNPARSEABLE, consistent=None)
        else:
            mean = (scores[0] + scores[1]) / 2
            row.update(judge_score=mean, judge_verdict=_outcome(mean), consistent=bool(scores[0] == scores[1]))
        out.append(row)
    return pd.DataFrame(out)


def judge_pairs(pairs: pd.DataFrame, complete: Callable[[list[ChatRequest], str | None], Sequence[Any]],
                max_tokens: int = 256) -> pd.DataFrame:
    """Judge every pair in both orders. `complete(requests, category)` returns ChatResult-like objects in order
    (an open `judge.session(...)`'s `complete`). Calls are grouped by category for the ledger."""
    if pairs.empty:
        return combine(pairs, {})
    answers: dict[tuple[str, str], tuple[str, str | None]] = {}
    for cat, grp in pairs.groupby("category", sort=True):
        reqs = build_requests(grp, max_tokens=max_tokens)
        results = complete(reqs, cat)
        for req, res in zip(reqs, results):
            answers[req.tag] = (res.status, res.content)
    return combine(pairs, answers)


def make_pairs(results: pd.DataFrame, candidate: str, opponent: str, comparison: str) -> pd.DataFrame:
    """Pairs (one per example both variants answered). results: example_id, variant, category, prompt, response."""
    c = results[results["variant"] == candidate][["example_id", "category", "prompt", "response"]]
    o = results[results["variant"] == opponent][["example_id", "response"]]
    m = c.merge(o, on="example_id", suffixes=("_c", "_o"))
    return pd.DataFrame({
        "pair_id": [f"{comparison}:{candidate}:{e}" for e in m["example_id"]],
        "comparison": comparison, "candidate": candidate, "opponent": opponent,
        "example_id": m["example_id"].to_numpy(), "category": m["category"].to_numpy(),
        "prompt": m["prompt"].to_numpy(),
        "candidate_response": m["response_c"].fillna("").to_numpy(),
        "opponent_response": m["response_o"].fillna("").to_numpy(),
    })


def win_rates(judged: pd.DataFrame, by: list[str], n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Win rate (win 1, tie 0.5) with bootstrap 95% CI, position-consistency rate, the judge's signal and the
    separately counted parse failures and judge errors, per group.

    A group whose judge has no signal (consistency below 50%, or every valid comparison a tie) gets NaN as
    win rate and CI: 50% and a zero-width interval would read as a measured result."""
    cols = [*by, "n_pairs", "n_valid", "wins", "ties", "losses", "win_rate", "win_ci_low", "win_ci_high",
            "consistency_rate", "judge_signal", "unparseable", "judge_errors"]
    if judged.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for key, g in judged.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        valid = g[g["judge_verdict"].isin([WIN, TIE, LOSS])]
        scores = valid["judge_score"].astype(float).to_numpy()
        ties = int((valid["judge_verdict"] == TIE).sum())
        consistency = float(valid["consistent"].astype(bool).mean()) if len(valid) else float("nan")
        signal = judge_signal(len(valid), ties, consistency)
        lo, hi = bootstrap_ci(scores, n_boot=n_boot, seed=seed) if signal == SIGNAL_OK else (math.nan, math.nan)
        rows.append({
            **dict(zip(by, key)), "n_pairs": len(g), "n_valid": len(valid),
            "wins": int((valid["judge_verdict"] == WIN).sum()), "ties": ties,
            "losses": int((valid["judge_verdict"] == LOSS).sum()),
            "win_rate": float(scores.mean()) if signal == SIGNAL_OK else math.nan,
            "win_ci_low": lo, "win_ci_high": hi, "consistency_rate": consistency, "judge_signal": signal,
            "unparseable": int((g["judge_verdict"] == UNPARSEABLE).sum()),
            "judge_errors": int((g["judge_verdict"] == JUDGE_ERROR).sum()),
        })
    return pd.DataFrame(rows, columns=cols)


def rationale(row: dict | pd.Series) -> str:
    """Both orders' judge texts, labelled with which side the candidate was on."""
    parts = []
    for order, side in (("ab", "student=A"), ("ba", "student=B")):
        text = row.get(f"rationale_{order}")
        if isinstance(text, str) and text.strip():
            parts.append(f"[{side}] {text.strip()}")
    return "\n".join(parts)


__all__ = ["JUDGE_PROMPT", "parse_verdict", "candidate_score", "build_requests", "combine", "judge_pairs",
           "make_pairs", "win_rates", "rationale"]
