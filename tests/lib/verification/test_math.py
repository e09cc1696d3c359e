import pytest

from distill_assets.lib.verification.math import (
    answers_match,
    extract_final_answer,
    majority_verdicts,
    to_number,
    verify_math,
)


@pytest.mark.parametrize("text,answer,method", [
    ("24 - 7 = 17, 17 + 12 = 29. Therefore, the answer is: 29", "29", "answer_is"),
    ("Therefore, the answer is: $12.50.", "12.50", "answer_is"),
    ("The answer is **29 stickers**.", "29 stickers", "answer_is"),
    ("work...\n#### 1,234\n", "1,234", "hashes"),
    ("so we get \\boxed{\\frac{1}{2}} in the end", "\\frac{1}{2}", "boxed"),
    ("first 3, then 7 apples", "7", "last_number"),
    ("no numbers here", None, "none"),
    ("", None, "none"),
])
def test_extract_final_answer(text, answer, method):
    ex = extract_final_answer(text)
    assert (ex.answer, ex.method) == (answer, method)


def test_the_answer_is_wins_over_a_later_number():
    assert extract_final_answer("Therefore, the answer is: 29. Check: 29 - 12 = 17").answer == "29"


@pytest.mark.parametrize("a,b,expected", [
    ("29", "29", True), ("29.0", "29", True), ("1,234", "1234", True), ("\\frac{1}{2}", "0.5", True),
    ("3/4", "0.75", True), ("50%", "0.5", True), ("29 stickers", "29", True), ("$12.50", "12.5", True),
    ("(x+1)^2", "x^2+2*x+1", True), ("30", "29", False), ("28.9", "29", False), (None, "29", False),
])
def test_answers_match(a, b, expected):
    assert answers_match(a, b) is expected


def test_to_number_rejects_prose():
    assert to_number("a lot") is None
    assert to_number("-3.5") == pytest.approx(-3.5)


def test_verify_math_against_reference():
    assert verify_math("Therefore, the answer is: 72", "72").status == "pass"
    v = verify_math("Therefore, the answer is: 70", "72")
    assert (v.status, v.reason, v.answer) == ("fail", "verify_mismatch", "70")
    assert verify_math("I do not know", "72").reason == "verify_no_answer"
    assert verify_math("Therefore, the answer is: 72", None).status == "unverifiable"


def test_majority_needs_a_strict_majority():
    out = majority_verdicts(["8", "8.0", "9"])
    assert [o[0] for o in out] == ["pass", "pass", "fail"]
    tie = majority_verdicts(["8", "9"])
    assert [o[0] for o in tie] == ["fail", "fail"]
    assert tie[0][1] == "verify_no_majority"
    assert majority_verdicts(["8"])[0][:2] == ("unverifiable", "verify_single_sample")
    # a sample with no answer counts against the majority
    assert [o[0] for o in majority_verdicts(["8", None, None, "8"])] == ["fail", "fail", "fail", "fail"]
