import pytest

from distill_assets.lib.verification.labels import parse_label, verify_label

LABELS = ["billing", "shipping", "technical", "account", "product_question"]


@pytest.mark.parametrize("text,label,method", [
    ("billing", "billing", "exact"),
    ("Billing.", "billing", "exact"),
    ("**TECHNICAL**", "technical", "exact"),
    ("Label: shipping", "shipping", "prefix"),
    ("Intent: product_question (the user asks about sizes)", "product_question", "prefix"),
    ("This is a product question.", "product_question", "first_match"),
    ("It is about the account, not billing", "account", "first_match"),
    ("The customer is happy", None, "none"),
    ("", None, "none"),
])
def test_parse_label(text, label, method):
    p = parse_label(text, LABELS)
    assert (p.label, p.method) == (label, method)


def test_label_word_inside_another_word_does_not_count():
    assert parse_label("rebilling happened", LABELS).label is None


def test_verify_label():
    assert verify_label("Label: Billing", "billing", LABELS).status == "pass"
    v = verify_label("shipping", "billing", LABELS)
    assert (v.status, v.reason, v.answer) == ("fail", "verify_mismatch", "shipping")
    assert verify_label("no idea", "billing", LABELS).reason == "verify_no_label"
    assert verify_label("billing", None, LABELS).status == "unverifiable"
