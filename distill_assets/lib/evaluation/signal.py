"""Whether a pairwise judge tells the two sides apart at all.

A judge whose verdicts flip with the order of the responses (position consistency below 50%) or that calls
every pair a tie carries no information about which side is better: its win rate is 50% by construction and
its bootstrap CI collapses to a point. Such a win rate is not shown, stored or used by the gate.
"""

from __future__ import annotations

import math

MIN_CONSISTENCY = 0.5  # below this the two orders disagree more often than they agree
OK = "ok"


def judge_signal(n_valid: int, ties: int, consistency_rate: float | None) -> str:
    """'ok', or why the verdicts carry no signal: 'no signal (consistency 0%)', 'no signal (all 6 comparisons
    tied)', 'no valid verdicts'."""
    if not n_valid:
        return "no valid verdicts"
    if consistency_rate is not None and not math.isnan(consistency_rate) and consistency_rate < MIN_CONSISTENCY:
        return f"no signal (consistency {consistency_rate:.0%})"
    if ties >= n_valid:
        return f"no signal (all {n_valid} comparisons tied)"
    return OK


def has_signal(label: object) -> bool:
    """True for 'ok'; a missing label (rows stored before the signal was recorded) counts as ok."""
    return label is None or (isinstance(label, float) and math.isnan(label)) or label == OK


def no_signal(label: object) -> bool:
    """True when the judge answered but its verdicts say nothing (not when it gave no valid verdict at all)."""
    return isinstance(label, str) and label.startswith("no signal")


def describe(label: object) -> str:
    """The sentence the report and the metadata show in place of a win rate."""
    if has_signal(label):
        return OK
    text = str(label)
    return text.replace("no signal", "judge has no signal here", 1) if no_signal(text) else text


__all__ = ["MIN_CONSISTENCY", "OK", "judge_signal", "has_signal", "no_signal", "describe"]
