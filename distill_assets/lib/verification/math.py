"""Math answers: pull the final answer out of a solution and compare it with a reference, or with the other
samples of the same problem (self-consistency) when there is no reference."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from fractions import Fraction

# the demo system prompt asks for "Therefore, the answer is: <number>"
_ANSWER_IS = re.compile(
    r"(?:therefore|thus|so|hence)?,?\s*(?:the\s+)?(?:final\s+)?answer\s*(?:is|=|:)\s*:?\s*(.+)", re.IGNORECASE)
_FINAL_ANSWER = re.compile(r"final\s+answer\s*[:=]\s*(.+)", re.IGNORECASE)
_HASHES = re.compile(r"^\s*####\s*(.+?)\s*$", re.MULTILINE)
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?%?")


@dataclass
class Extracted:
    answer: str | None
    method: str  # answer_is | hashes | boxed | final_answer | last_number | none


def _boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces balanced."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    if not starts:
        return None
    i = starts[-1]
    depth, j = 1, i
    while j < len(text) and depth:
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
        j += 1
    return text[i:j - 1].strip() if depth == 0 else None


def _clean(ans: str) -> str:
    ans = ans.strip().splitlines()[0] if ans.strip() else ""
    ans = re.sub(r"\*\*|__", "", ans)
    ans = re.split(r"[.;!](?:\s|$)", ans)[0]  # the sentence that states the answer, not what follows
    ans = ans.strip().strip("$").strip()
    ans = re.sub(r"^\\\(|\\\)$", "", ans).strip()
    inner = _boxed(ans)
    if inner is not None:
        ans = inner
    return ans.rstrip(".;,!").strip()


def extract_final_answer(text: str | None) -> Extracted:
    """"Therefore, the answer is: X", "#### X", \\boxed{X}, "Final answer: X", else the last number."""
    if not text or not text.strip():
        return Extracted(None, "none")
    matches = list(_ANSWER_IS.finditer(text))
    if matches:
        ans = _clean(matches[-1].group(1))
        if ans:
            return Extracted(ans, "answer_is")
    m = list(_HASHES.finditer(text))
    if m:
        ans = _clean(m[-1].group(1))
        if ans:
            return Extracted(ans, "hashes")
    boxed = _boxed(text)
    if boxed:
        return Extracted(_clean(boxed), "boxed")
    m = list(_FINAL_ANSWER.finditer(text))
    if m and _clean(m[-1].group(1)):
        return Extracted(_clean(m[-1].group(1)), "final_answer")
    nums = _NUMBER.findall(text)
    if nums:
        return Extracted(nums[-1].strip(), "last_number")
    return Extracted(None, "none")


def to_number(s: str | None) -> Fraction | None:
    """A plain numeric answer as an exact Fraction: 1,234 / -3.5 / 3/4 / \\frac{3}{4} / 25% / "$12 apples"."""
    if s is None:
        return None
    t = s.strip().replace("\\$", "").replace("$", "").replace("\\,", "").replace("\\!", "")
    t = re.sub(r"\\text\{[^}]*\}", "", t)
    t = re.sub(r"\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}", r"(\1)/(\2)", t)
    t = t.replace("\\%", "%").strip()
    # a number followed by a unit or words ("29 stickers") counts as that number
    m = re.fullmatch(r"\(?([-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)\)?(?:\s*/\s*\(?(\d+(?:\.\d+)?)\)?)?\s*(%?)"
                     r"(?:\s*[A-Za-z][A-Za-z .'-]*)?", t)
    if not m:
        return None
    try:
        value = Fraction(m.group(1).replace(",", ""))
        if m.group(2):
            den = Fraction(m.group(2))
            if den == 0:
                return None
            value /= den
        if m.group(3):
            value /= 100
        return value
    except (ValueError, ZeroDivisionError):
        return None


def _sym(a: str, b: str) -> bool:
    """Symbolic equality via math-verify (sympy underneath), for answers that are not plain numbers."""
    try:
        from math_verify import parse, verify  # deferred: heavy optional dependency

        logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns on every call without timeouts

        # the library's signal-based timeouts only work in the main thread; inputs here are short answers
        ga = parse(f"${b}$", parsing_timeout=None)
        pa = parse(f"${a}$", parsing_timeout=None)
        if not ga or not pa:
            return False
        return bool(verify(ga, pa, timeout_seconds=None))
    except Exception:
        return False


def _norm_text(s: str) -> str:
    return re.sub(r"\s+", " ", s.strip().lower().rstrip("."))


def answers_match(answer: str | None, reference: str | None, rel_tol: float = 1e-6) -> bool:
    """Numerically (exact fractions, then a relative tolerance) or symbolically equal."""
    if answer is None or reference is None:
        return False
    if _norm_text(answer) == _norm_text(reference):
        return True
    a, r = to_number(answer), to_number(reference)
    if a is not None and r is not None:
        return a == r or abs(float(a) - float(r)) <= rel_tol * max(1.0, abs(float(r)))
    if len(answer) > 200 or len(reference) > 200:
        return False  # not a final answer; symbolic parsing of prose is slow and meaningless
    return _sym(answer, reference)


@dataclass
class MathVerdict:
    status: str  # pass | fail | unverifiable
    reason: str
    answer: str | None
    method: str
    reference: str | None
    detail: dict


def verify_math(response: str, reference: str | None) -> MathVerdict:
    ex = extract_final_answer(response)
    if reference is None or str(reference).strip() == "":
        return MathVerdict("unverifiable", "verify_no_reference", ex.answer, ex.method, None, {})
    if ex.answer is None:
        return MathVerdict("fail", "verify_no_answer", None, ex.method, reference, {})
    ok = answers_match(ex.answer, str(reference))
    return MathVerdict("pass" if ok else "fail", "ok" if ok else "verify_mismatch", ex.answer, ex.method,
                       str(reference), {})


def vote(mine: str | None, votes: list[str | None], match=answers_match,
         min_agree: float = 0.5) -> tuple[str, str, dict]:
    """Self-consistency of one sample among all samples of its problem: it passes when more than `min_agree`
    of the samples (those with no answer count against) agree with it (0.5: a strict majority); a lone
    sample is unverifiable."""
    n = len(votes)
    if n < 2:
        return "unverifiable", "verify_single_sample", {"samples": n}
    if mine is None:
        return "fail", "verify_no_answer", {"samples": n, "agree": 0}
    agree = sum(1 for v in votes if v is not None and (v == mine or match(mine, v)))
    ok = agree > min_agree * n
    return ("pass" if ok else "fail", "ok" if ok else "verify_no_majority",
            {"samples": n, "agree": agree, "min_agree": min_agree, "answers": votes})


def majority_verdicts(answers: list[str | None], match=answers_match,
                      min_agree: float = 0.5) -> list[tuple[str, str, dict]]:
    """`vote` for every sample of one problem."""
    return [vote(a, answers, match, min_agree) for a in answers]
