import json
import random

import numpy as np
import pandas as pd
import pytest

from distill_assets.lib.filters.language import language_sample
from distill_assets.lib.filters.quality import quality_filter, quality_verdicts, repeat_ngram_ratio
from distill_assets.lib.tasks import Filters, load_tasks
from distill_assets.lib.tokenizer import count_tokens, student_tokenizer

GOOD = ("To reset your password, open the account page, choose 'Forgot password' and follow the link "
        "we email you. The link is valid for one hour, so use it soon.")


@pytest.fixture(scope="module")
def tok():
    return student_tokenizer()


def row(resp, instr="How do I reset my password?", **kw):
    m = [{"role": "system", "content": "Be helpful."}, {"role": "user", "content": instr},
         {"role": "assistant", "content": resp}]
    d = {"example_id": f"e{random.random()}", "messages": json.dumps(m), "response": resp, "instruction": instr}
    d.update(kw)
    return d


def verdicts(rows, tok, **filters):
    f = Filters(**{"min_tokens": 4, "max_tokens": 60, **filters})
    return quality_verdicts(pd.DataFrame(rows), f, tokenizer=tok)


@pytest.mark.parametrize("resp,reason", [
    ("", "empty"),
    ("   \n\t ", "empty"),
    ("Caf\u00c3\u00a9 au lait is the drink you ordered; we will refund it within five days.", "encoding_error"),
    ("Your order \u00e2\u20ac\u2122s tracking number is in the email we sent, please check it.", "encoding_error"),
    ("Bad byte \ufffd here in this otherwise normal English sentence about your refund.", "encoding_error"),
    ("Control \x07 char in this otherwise normal English sentence about your refund today.", "encoding_error"),
    ("Yes ok", "too_short"),
    (" ".join(f"word{i}" for i in range(80)), "too_long"),
    ("I'm sorry, but I cannot share that information with you at this time, friend.", "refusal"),
    ("As an AI language model I do not have access to your order history at all.", "refusal"),
    ("Step one.\n\n\n\nStep two.\n\n\n\nStep three.\n\n\n\nDone with the reset now.", "excess_whitespace"),
    (" ".join(["please restart the router now"] * 6), "repetitive"),
    ("Pour réinitialiser votre mot de passe, ouvrez la page du compte et suivez le lien envoyé.", "wrong_language"),
])
def test_rule_drops(tok, resp, reason):
    v = verdicts([row(resp), row(GOOD)], tok)
    assert v["reason"].iloc[0] == reason, v["evidence"].iloc[0]
    assert not v["keep"].iloc[0]
    assert v["keep"].iloc[1] and v["reason"].iloc[1] == ""


def test_negative_cases_are_kept(tok):
    ok = [
        GOOD,
        "Line one\n\nLine two\n\nLine three, all fine with single blank lines between.\r\nWindows ending too.",
        "Na\u00efve caf\u00e9 r\u00e9sum\u00e9: proper accents are not mojibake, and this reply is in English.",
        "```python\ndef f(x):\n    return x\n```\nThis function returns its argument unchanged.",
        "Thanks!",  # too short for language id: unverifiable, not dropped (3 tokens >= min 2)
    ]
    v = verdicts([row(r) for r in ok], tok, min_tokens=2)
    assert v["keep"].all(), v[~v["keep"]].to_dict("records")
    assert v["evidence"].iloc[4]["language"] == "unverifiable"


def test_first_failing_rule_wins_and_evidence(tok):
    # both too short and a refusal: the length rule comes first
    v = verdicts([row("I'm sorry")], tok, min_tokens=10)
    assert v["reason"].iloc[0] == "too_short"
    assert v["evidence"].iloc[0]["tokens"] == int(count_tokens(["I'm sorry"], tok)[0])


def test_language_off_and_code_stripped(tok):
    fr = "Pour réinitialiser votre mot de passe, ouvrez la page du compte et suivez le lien envoyé."
    assert verdicts([row(fr)], tok, language=None)["keep"].all()
    assert "def" not in language_sample("```python\ndef f(): pass\n```\nHello there")


def test_repeat_ratio():
    assert repeat_ngram_ratio("a b c d e f g h") == 0.0
    assert repeat_ngram_ratio("a b c d a b c d a b c d") > 0.5


@pytest.mark.parametrize("bad,reason", [
    ({"messages": "{not json"}, "invalid_messages_json"),
    ({"messages": None}, "missing_messages"),
    ({"messages": json.dumps({"role": "user"})}, "messages_not_a_list"),
    ({"messages": json.dumps([{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}])},
     "wrong_roles_or_order"),
    ({"messages": json.dumps([{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}])},
     "non_string_content"),
    ({"response": None}, "missing_response"),
    ({"response": "something else"}, "response_mismatch"),
])
def test_malformed_rows_are_quarantined(tok, bad, reason):
    r = row(GOOD)
    r.update(bad)
    df = pd.DataFrame([r, row(GOOD)])
    out = quality_filter(df, load_tasks().category("support"), tokenizer=tok)
    assert out["verdict"].tolist() == ["quarantined", "kept"]
    assert out["reason"].iloc[0] == reason


def test_word_count_bounds_tokens(tok):
    rng = random.Random(0)
    chars = list("abc déf 12 !?\n\t  ü中'")
    texts = ["".join(rng.choice(chars) for _ in range(rng.randint(0, 80))) for _ in range(500)]
    c = count_tokens(texts, tok)
    w = np.array([len(t.split()) for t in texts])
    b = np.array([len(t.encode()) for t in texts])
    assert (w <= c).all() and (c <= b + 1).all()


def test_length_shortcut_matches_exact(tok):
    rng = random.Random(1)
    words = ["hello", "world", "réponse", "12345", "!!", "x"]
    rows = [row(" ".join(rng.choice(words) for _ in range(rng.randint(1, 70)))) for _ in range(200)]
    v = verdicts(rows, tok, min_tokens=10, max_tokens=40, language=None, max_repeat_ngram_ratio=1.0)
    c = count_tokens([r["response"] for r in rows], tok)
    expect = np.where(c < 10, "too_short", np.where(c > 40, "too_long", ""))
    assert v["reason"].tolist() == expect.tolist()


def test_apology_is_not_a_refusal_but_a_refusal_is(tok):
    v = verdicts([row("I'm sorry to hear your parcel is late. I have checked the tracking and it ships today, "
                      "so you should have it by Friday."),
                  row("I'm sorry, but I can't help with that request. Please contact someone else about it.")], tok)
    assert v["keep"].tolist() == [True, False] and v["reason"].iloc[1] == "refusal"


def test_function_word_prescreen_settles_plain_english_and_leaves_the_rest_to_lingua(tok):
    v = verdicts([row("To reset your password, open the settings page and choose the option that says reset, "
                      "then follow the link that we send to your email address."),
                  row("Pour réinitialiser votre mot de passe, ouvrez la page des paramètres et suivez le lien "
                      "que nous envoyons à votre adresse électronique.")], tok)
    ev = [json.loads(e) if isinstance(e, str) else e for e in v["evidence"]]
    assert ev[0]["method"] == "function_word_prescreen" and v["keep"].iloc[0]
    assert not v["keep"].iloc[1] and v["reason"].iloc[1] == "wrong_language" and ev[1]["language"] == "fr"
