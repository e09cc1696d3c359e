"""Per-turn rules over multi-turn rows: every assistant turn is checked as if it were its own single-turn row.

A conversation row is expanded into one (previous turn, assistant turn) pair per assistant turn, the rules run
on all pairs at once (so the vectorized path stays vectorized), and each row gets the verdict of its first
failing turn, with `turn` (its index in `messages`) and `assistant_turn` (1-based) in the evidence. Rows that
are single-turn, or malformed (the rules quarantine those), go through unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pandas as pd

from distill_assets.lib.conversation import assistant_indices, conversation_problem, is_plain_pair, loads, message_text


def _pairs(msgs: list[dict]) -> list[tuple[int, list[dict], str]]:
    """(index, [user-like turn, assistant turn], assistant text) for every assistant turn."""
    out = []
    for i in assistant_indices(msgs):
        prev = msgs[i - 1]
        text = message_text(msgs[i])
        out.append((i, [{"role": "user", "content": prev.get("content") or ""},
                        {"role": "assistant", "content": text}], text))
    return out


def every_turn(df: pd.DataFrame, verdicts: Callable[[pd.DataFrame], pd.DataFrame]) -> pd.DataFrame:
    """`verdicts` (keep, reason, evidence, quarantined per row) applied to every assistant turn of every row."""
    rows, owner, turn = [], [], []
    multi = False
    for pos, r in enumerate(df.to_dict("records")):
        msgs = loads(r.get("messages"))
        expand = (msgs is not None and conversation_problem(msgs) is None and not is_plain_pair(msgs)
                  and r.get("response") == message_text(msgs[-1]))
        if not expand:
            rows.append(r)
            owner.append(pos)
            turn.append(None)
            continue
        multi = True
        for k, (i, pair, text) in enumerate(_pairs(msgs), start=1):
            rows.append({**r, "messages": json.dumps(pair, ensure_ascii=False), "instruction": pair[0]["content"],
                         "response": text})
            owner.append(pos)
            turn.append((i, k))
    if not multi:
        return verdicts(df)
    flat = verdicts(pd.DataFrame(rows, columns=df.columns).reset_index(drop=True))
    by_owner: dict[int, list[int]] = {}
    for j, o in enumerate(owner):
        by_owner.setdefault(o, []).append(j)
    f_keep, f_q = flat["keep"].tolist(), flat["quarantined"].tolist()
    f_reason, f_ev = flat["reason"].tolist(), flat["evidence"].tolist()
    keep, reason, evidence, quarantined = [], [], [], []
    for pos in range(len(df)):
        idx = by_owner[pos]
        first_bad = next((j for j in idx if not f_keep[j] or f_q[j]), None)
        j = first_bad if first_bad is not None else idx[-1]
        ev = dict(f_ev[j])
        if turn[j] is not None:
            ev.update(turn=turn[j][0], assistant_turn=turn[j][1], assistant_turns=len(idx))
        keep.append(bool(f_keep[j]) and first_bad is None)
        reason.append(f_reason[j])
        evidence.append(ev)
        quarantined.append(bool(f_q[j]))
    return pd.DataFrame({"keep": keep, "reason": reason, "evidence": evidence, "quarantined": quarantined},
                        index=df.index)
