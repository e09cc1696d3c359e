"""Classification answers: find which of the category's labels a response gives, and compare with the reference."""

from __future__ import annotations

import re
from dataclasses import dataclass

_PREFIX = re.compile(r"\b(?:label|intent|category|class|answer)\s*[:=\-]\s*\**\s*([A-Za-z][\w \-]*)", re.IGNORECASE)


def _norm(s: str) -> str:
    return re.sub(r"[\s_\-]+", " ", s.strip().lower())


def _pattern(label: str) -> re.Pattern:
    # "product_question" also matches "product question" and "product-question"
    parts = [re.escape(p) for p in re.split(r"[\s_\-]+", label.strip()) if p]
    return re.compile(r"(?<![A-Za-z0-9])" + r"[\s_\-]+".join(parts) + r"(?![A-Za-z0-9])", re.IGNORECASE)


@dataclass
class LabelParse:
    label: str | None
    method: str  # prefix | exact | first_match | none


def parse_label(text: str | None, labels: list[str]) -> LabelParse:
    """"Label: X" first, then the whole answer being a label, then the earliest label word in the text."""
    if not text or not labels:
        return LabelParse(None, "none")
    by_norm = {_norm(l): l for l in labels}
    for m in _PREFIX.finditer(text):
        cand = m.group(1)
        for label in sorted(labels, key=len, reverse=True):
            if _pattern(label).match(cand.strip()):
                return LabelParse(label, "prefix")
    whole = _norm(re.sub(r"[*`\"'.!,:;()\[\]]", " ", text))
    if whole in by_norm:
        return LabelParse(by_norm[whole], "exact")
    best: tuple[int, int, str] | None = None
    for label in labels:
        m = _pattern(label).search(text)
        if m and (best is None or (m.start(), -len(label)) < (best[0], best[1])):
            best = (m.start(), -len(label), label)
    return LabelParse(best[2], "first_match") if best else LabelParse(None, "none")


@dataclass
class LabelVerdict:
    status: str
    reason: str
    answer: str | None
    method: str
    reference: str | None


def verify_label(response: str, reference: str | None, labels: list[str]) -> LabelVerdict:
    p = parse_label(response, labels)
    if reference is None or str(reference).strip() == "":
        return LabelVerdict("unverifiable", "verify_no_reference", p.label, p.method, None)
    if p.label is None:
        return LabelVerdict("fail", "verify_no_label", None, p.method, str(reference))
    ok = _norm(p.label) == _norm(str(reference))
    return LabelVerdict("pass" if ok else "fail", "ok" if ok else "verify_mismatch", p.label, p.method,
                        str(reference))


def labels_match(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and _norm(a) == _norm(b)
