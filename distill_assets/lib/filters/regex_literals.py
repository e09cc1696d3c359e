"""Refusal prefilter: literal strings that every match of the refusal regexes must contain.

A row holding none of them cannot match, so the regex only runs on the rows that do (bytes.find over a chunk).
"""

import re
from collections.abc import Callable

# re._parser / re._constants are CPython-private (3.11+): if they move, the ImportError fallback below makes every
# row a refusal candidate, which is slower but gives the same verdicts.
try:
    from re import _constants as _sre_c
    from re import _parser as _sre_p
    _REPEATS = (_sre_c.MAX_REPEAT, _sre_c.MIN_REPEAT, getattr(_sre_c, "POSSESSIVE_REPEAT", _sre_c.MAX_REPEAT))
except ImportError:  # pragma: no cover
    _sre_c = _sre_p = None
_FIN_MAX = 8  # largest finite set of strings tracked per regex piece


def _fin_item(item) -> set[str] | None:
    """The finite set of strings one parsed regex item matches (zero-width items match ''), or None."""
    op, av = item
    if op is _sre_c.LITERAL:
        return {chr(av)}
    if op is _sre_c.AT:
        return {""}
    if op is _sre_c.IN:
        chars: set[str] = set()
        for o, a in av:
            if o is _sre_c.LITERAL:
                chars.add(chr(a))
            elif o is _sre_c.RANGE and a[1] - a[0] < _FIN_MAX:
                chars.update(chr(c) for c in range(a[0], a[1] + 1))
            else:
                return None
        return chars if len(chars) <= _FIN_MAX else None
    if op is _sre_c.SUBPATTERN:
        _, add_flags, _, sub = av
        return None if add_flags & re.IGNORECASE else _fin_seq(sub)
    if op is _sre_c.BRANCH:
        out: set[str] = set()
        for b in av[1]:
            f = _fin_seq(b)
            if f is None:
                return None
            out |= f
        return out if len(out) <= _FIN_MAX else None
    if op in _REPEATS:
        lo, hi, sub = av
        f = _fin_seq(sub)
        if f is None or hi > 3:
            return None
        out, cur = set(), {""}
        for k in range(hi + 1):
            if k >= lo:
                out |= cur
            cur = {a + b for a in cur for b in f}
            if len(cur) > _FIN_MAX:
                return None
        return out if len(out) <= _FIN_MAX else None
    return None


def _fin_seq(items) -> set[str] | None:
    acc = {""}
    for it in items:
        f = _fin_item(it)
        if f is None:
            return None
        acc = {a + b for a in acc for b in f}
        if len(acc) > _FIN_MAX:
            return None
    return acc


def _req_seq(items, choose: Callable[[list[frozenset]], frozenset]) -> list[frozenset]:
    """Sets of strings of which every match of the sequence contains at least one (each set is a valid prefilter).
    `choose` picks one set per alternative of an inner branch (their union is then required)."""
    cands: list[frozenset] = []
    acc = {""}

    def flush():
        if acc and "" not in acc:
            cands.append(frozenset(acc))

    for it in items:
        f = _fin_item(it)
        if f is not None:
            prod = {a + b for a in acc for b in f}
            if len(prod) <= _FIN_MAX:
                acc = prod
            else:
                flush()
                acc = set(f)
            continue
        flush()
        acc = {""}
        op, av = it
        if op is _sre_c.SUBPATTERN and not av[1] & re.IGNORECASE:
            cands += _req_seq(av[3], choose)
        elif op is getattr(_sre_c, "ATOMIC_GROUP", None):
            cands += _req_seq(av, choose)
        elif op in _REPEATS and av[0] >= 1:
            cands += _req_seq(av[2], choose)
        elif op is _sre_c.BRANCH:
            per = [_req_seq(b, choose) for b in av[1]]
            if all(per):
                cands.append(frozenset().union(*(choose(p) for p in per)))
    flush()
    return cands


def _common_substrings(s: frozenset, min_len: int = 3) -> list[frozenset]:
    """Maximal substrings that every string of `s` contains, as one-needle requirement sets."""
    x = min(s, key=len)
    found: list[str] = []
    for ln in range(len(x), min_len - 1, -1):
        for i in range(len(x) - ln + 1):
            sub = x[i:i + ln]
            if not any(sub in f for f in found) and all(sub in y for y in s):
                found.append(sub)
    return [frozenset([f]) for f in found]


def refusal_literals(pattern: str, sample: list[str]) -> list[str] | None:
    """Strings of which every match of `pattern` contains one, chosen to be few and rare in `sample` (each needle
    is one scan of the text, each row holding one costs a regex search); None when some alternative of the pattern
    has no literal it must contain (then every row is a candidate)."""
    if _sre_p is None:
        return None
    try:
        parsed = _sre_p.parse(pattern)
    except re.error:
        return None
    if parsed.state.flags & re.IGNORECASE:
        return None

    def cost(s: frozenset) -> tuple[float, int]:
        hits = sum(any(x in t for x in s) for t in sample) / max(len(sample), 1)
        return len(s) + 20 * hits, -min(len(x) for x in s)

    def choose(cands: list[frozenset]) -> frozenset:
        return min(cands + [c for s in cands if len(s) > 1 for c in _common_substrings(s)], key=cost)

    cands = _req_seq(list(parsed), choose)
    if not cands:
        return None
    out = choose(cands)
    return sorted(x for x in out if not any(y != x and y in x for y in out))
