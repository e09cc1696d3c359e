"""The fast paths of quality_verdicts give the verdicts of the plain per-row rules.

Every shortcut (token-count bounds, byte prefilters, required refusal literals, hashed n-grams, the vectorized
language sample and prescreen, the inline JSON check) is compared with the per-row definition on generated rows;
the language prescreens are checked for accuracy on real sentences in many languages.
"""

import json
import random
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distill_assets.lib import tokenizer as tk
from distill_assets.lib.filters import byte_kernels as bk
from distill_assets.lib.filters import language as lg
from distill_assets.lib.filters import parse
from distill_assets.lib.filters import regex_literals as rl
from distill_assets.lib.filters.language import language_sample, prescreen_counts, prescreen_decision
from distill_assets.lib.filters.parse import parse_record
from distill_assets.lib.filters.quality import BLANK_RUN, MOJIBAKE, quality_verdicts, repeat_ngram_ratio
from distill_assets.lib.tasks import Filters
from distill_assets.lib.tokenizer import count_tokens, student_tokenizer

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FRAGMENTS = [
    "hello", "World", "the", "of", "and", "order", "refund", "réponse", "Straße", "STRASSE", "中文", "😀", "x",
    "=" * 40, "-" * 70, "<|im_end|>", "<|im_start|>", "don't", "it's", "’", "12345", "3.14", "!!", "(", ")", ",",
    "e-mail", "U.S.", "https://example.com/a?b=c", "`code`", "```py\nx = 1\n```", "supercalifragilisticexpialidocious",
    "I'm sorry, but I can't help with that.", "As an AI language model, I", "I am unable to assist",
    "I cannot help you with this", "sorry but I", "I can't assist with that", "able to",
    "\ufffd", "Ã©", "â€™", "Ã", "\x07", "\x1c", "\x7f", "\r", "\r\n", "\u00a0", "\u2028", "\x85", "\u3000", "\ud800",
    "\n\n\n", " \t\n \n\n", "\t",
]
SEPS = [" ", " ", " ", "\n", "  ", "\t", "", "\n\n"]


@st.composite
def texts(draw, max_parts=40):
    parts = draw(st.lists(st.sampled_from(FRAGMENTS), max_size=max_parts))
    seps = draw(st.lists(st.sampled_from(SEPS), min_size=len(parts), max_size=len(parts)))
    return "".join(p + s for p, s in zip(parts, seps))


@pytest.fixture(scope="module")
def tok():
    return student_tokenizer()


def frame(responses, instructions=None):
    instructions = instructions or ["How do I reset my password?"] * len(responses)
    rows = []
    for i, (r, u) in enumerate(zip(responses, instructions)):
        m = [{"role": "system", "content": "Be helpful."}, {"role": "user", "content": u},
             {"role": "assistant", "content": r}]
        rows.append({"example_id": f"e{i}", "messages": json.dumps(m), "response": r})
    # object columns: pandas 3's default string dtype cannot hold the lone surrogates these cases include
    return pd.DataFrame(rows, dtype=object)


def reference_reason(text: str, instruction: str, f: Filters, tok) -> str:
    """The rules one row at a time, each computed exactly (the definition the fast paths must match)."""
    if not text.strip():
        return "empty"
    if MOJIBAKE.search(text) or MOJIBAKE.search(instruction):
        return "encoding_error"
    n = int(count_tokens([text], tok)[0])
    if n < f.min_tokens:
        return "too_short"
    if n > f.max_tokens:
        return "too_long"
    if f.refusal_patterns and re.search("|".join(f"(?:{p})" for p in f.refusal_patterns), text):
        return "refusal"
    if len(BLANK_RUN.findall(text)) > f.max_blank_run:
        return "excess_whitespace"
    if repeat_ngram_ratio(text) > f.max_repeat_ngram_ratio:
        return "repetitive"
    return ""


@SETTINGS
@given(st.lists(texts(), min_size=1, max_size=25), st.lists(texts(8), min_size=25, max_size=25),
       st.integers(0, 30), st.integers(1, 80), st.sampled_from([0.0, 0.1, 0.3, 1.0]), st.integers(0, 3))
def test_rules_without_language_match_the_per_row_definitions(tok, resps, instrs, lo, hi, rep, blank):
    f = Filters(min_tokens=lo, max_tokens=hi, language=None, max_repeat_ngram_ratio=rep, max_blank_run=blank)
    v = quality_verdicts(frame(resps, instrs[:len(resps)]), f, tokenizer=tok)
    want = [reference_reason(r, u, f, tok) for r, u in zip(resps, instrs)]
    assert v["reason"].tolist() == want
    for r, reason, ev in zip(resps, v["reason"], v["evidence"]):
        if reason in ("too_short", "too_long") and "tokens" in ev:
            assert ev["tokens"] == int(count_tokens([r], tok)[0])
        if reason == "too_short" and "tokens" not in ev:
            assert ev["bound"] == "utf8_bytes" and int(count_tokens([r], tok)[0]) <= ev["tokens_at_most"] < lo
        if reason == "too_long" and "tokens" not in ev:
            assert hi < ev["tokens_at_least"] <= int(count_tokens([r], tok)[0])


def test_length_bounds_hold_for_the_student_tokenizer(tok):
    assert tk.token_bounds(tok) == "words"
    rng = random.Random(3)
    pieces = FRAGMENTS[:35] + [" ", "\n", "\t", "  ", "ab", "é", "中", "😀😀", "=" * 200]
    texts_ = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 60))) for _ in range(3000)]
    texts_ = [t for t in texts_ if not MOJIBAKE.search(t)]
    c = count_tokens(texts_, tok)
    nb = np.array([len(t.encode()) for t in texts_])
    runs = np.array([len(re.findall(rb"[^\t\n\r ]+", t.encode())) for t in texts_])
    longest = tk.max_token_bytes(tok)
    assert (np.maximum(-(-nb // longest), runs) <= c).all() and (c <= nb + 1).all()


def test_a_bound_decides_without_tokenizing(tok):
    long_text = " ".join(f"word{i}" for i in range(5000))
    v = quality_verdicts(frame([long_text, "ok"]), Filters(min_tokens=8, max_tokens=2048, language=None),
                         tokenizer=tok)
    assert v["reason"].tolist() == ["too_long", "too_short"]
    assert v["evidence"][0] == {"rule": "length", "tokens_at_least": 5000, "bound": "words", "max_tokens": 2048}
    assert v["evidence"][1] == {"rule": "length", "tokens_at_most": 3, "bound": "utf8_bytes", "min_tokens": 8}


def test_min_above_max_still_reports_too_short_first(tok):
    v = quality_verdicts(frame(["one two three four five six"]), Filters(min_tokens=50, max_tokens=3, language=None),
                         tokenizer=tok)
    assert v["reason"].tolist() == ["too_short"]


@SETTINGS
@given(st.lists(st.lists(st.sampled_from(["a", "b", "c", "A", "B", "straße", "STRASSE", "ß", "é", "É", "x" * 12,
                                          "x" * 11 + "y", "y" + "x" * 11, "z" * 20, "z" * 19 + "q", "\u00a0",
                                          "1", "don't"]), max_size=60).map(" ".join), min_size=1, max_size=40))
def test_hashed_ngram_ratio_is_an_upper_bound_and_exact_in_practice(texts_):
    up = bk.ngram_ratio_upper(texts_)
    exact = np.array([repeat_ngram_ratio(t) for t in texts_])
    assert (up >= exact).all()
    # words are keyed by their first 8 bytes and their length: exact unless two distinct words share that key
    # (the filter recounts such rows exactly when the bound says "over the limit")
    def merges_words(t: str) -> bool:
        words = set(t.casefold().split())
        return len({(w.encode()[:8], len(w.encode())) for w in words}) < len(words)

    plain = np.array([not merges_words(t) for t in texts_])
    assert np.allclose(up[plain], exact[plain])


@SETTINGS
@given(st.lists(texts(), min_size=1, max_size=40))
def test_mojibake_prefilter_keeps_every_match(texts_):
    cand = bk.mojibake_candidates(texts_)
    assert all(cand[i] for i, t in enumerate(texts_) if MOJIBAKE.search(t))


PATTERNS = [
    *Filters().refusal_patterns,
    r"foo|ba+r|x\d+y", r"(?:abc|de)f?g", r"\bno(?:pe)?\b", r"[ab]c{2}d", r"(?i:Sorry)", r".*",
    r"I(?= can)", r"(a|b)\1", r"colou?r", r"^start", r"end$", r"(?:I|We) (?:won't|will not)", r"[^x]yz",
]


@SETTINGS
@given(st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=4),
       st.lists(st.tuples(texts(12), st.sampled_from(["", " foo", " baar", " x12y", " colour", " Sorry", " We won't",
                                                       " abcg", " deffg", " accd", " nope", " start"])).map("".join),
                min_size=1, max_size=30))
def test_refusal_literals_are_required_by_every_match(pats, texts_):
    pattern = "|".join(f"(?:{p})" for p in pats)
    rx = re.compile(pattern)
    lits = rl.refusal_literals(pattern, texts_[:5])
    for t in texts_:
        if rx.search(t):
            assert lits is None or any(x in t for x in lits), (pattern, lits, t)


def test_default_refusal_literals_are_few():
    pattern = "|".join(f"(?:{p})" for p in Filters().refusal_patterns)
    lits = rl.refusal_literals(pattern, ["Happy to help with the order."] * 50)
    assert lits is not None and len(lits) <= 4
    assert rl.refusal_literals("(?i)sorry", []) is None  # case-insensitive: no literal is required
    assert rl.refusal_literals("(?i:so)rry", []) == ["rry"]


ASCII_WORDS = ["the", "of", "to", "and", "refund", "order", "warehouse", "parcel", "is", "votre", "commande", "die",
               "und", "Der", "THE", "don't", "'", "''", "x", "supercalifragilistic", "co-op", "3rd", "U.S.", "(a)",
               "hello,", "world.", "a" * 17, "b" * 16, "mississippi", "`", "`inline`", "http://x.y/z", "https", "ok",
               # non-ASCII: Latin letters and punctuation take the byte path, the rest the per-row one
               "café", "naïve", "résumé", "it’s", "—", "“quoted”", "…", "É", "ß", "ﬁne", "İstanbul", "Kelvin",
               "中文", "Ωmega", " ", "x y", "€5", "😀", "ŁÓDŹ", "ệ"]


@SETTINGS
@given(st.lists(st.lists(st.sampled_from(ASCII_WORDS), max_size=70).flatmap(
    lambda ws: st.lists(st.sampled_from([" ", "  ", "\n", "\t", " \n "]), min_size=len(ws), max_size=len(ws)).map(
        lambda seps: "".join(w + s for w, s in zip(ws, seps)))), min_size=1, max_size=40))
def test_vectorized_language_sample_and_counts_match_per_row(texts_):
    fast, chars, words, fw, known, lead = bk._language_chunk(texts_, "en")
    for i, t in enumerate(texts_):
        if "`" in t or "http" in t:
            assert not fast[i]
        if t.isascii() or all(c.isascii() or c in "éïü’—“”…" for c in t):
            assert fast[i] or "`" in t or "http" in t or len(language_sample(t).split(" ", 1)[0]) > 200
        if not fast[i]:
            continue
        s = language_sample(t)
        assert chars[i] == len(s)
        assert (words[i], fw[i], known[i], lead[i], True) == prescreen_counts(s, "en")
        assert lg.function_word_share(s, lg.FUNCTION_WORDS["en"]) == (fw[i] / words[i] if words[i] >= 8 else 0.0)


@SETTINGS
@given(st.lists(st.one_of(
    st.just('[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]'),
    st.just(' [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}] '),
    st.just('[{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}, '
            '{"role": "assistant", "content": "yo"}]'),
    st.just('[{"role": "user", "content": 3}, {"role": "assistant", "content": "yo"}]'),
    st.just('[{"role": "assistant", "content": "yo"}, {"role": "user", "content": "hi"}]'),
    st.just('[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}'),
    st.just('[{"role": "system", "content": null}, {"role": "user", "content": "hi"}, '
            '{"role": "assistant", "content": "yo"}]'),
    st.just("[]"), st.just("null"), st.just("NaN"), st.just('"[x]"'), st.just("[1, 2]"), st.just("{}"),
    st.just('[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, 5]'),
    st.none(), st.just(float("nan")),
    st.just([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]),
), min_size=1, max_size=20), st.lists(st.sampled_from(["yo", "no", None, 3, float("nan")]), min_size=20,
                                      max_size=20), st.booleans())
def test_inline_json_check_matches_parse_record(msgs, resps, has_resp):
    resps = resps[:len(msgs)]
    problems, users, assistants = parse._parse_rows(msgs, resps, has_resp)
    for m, r, p, u, a in zip(msgs, resps, problems, users, assistants):
        want = parse_record(m, r, has_resp)
        assert (p, u, a) == (want[0], want[2], want[3])


def reference_language_reason(text: str, f: Filters, det) -> str:
    """The language rule one row at a time: sample, prescreens, else the detector."""
    s = language_sample(text)
    if len(s) < f.language_min_chars:
        return ""
    method, _ = prescreen_decision(*prescreen_counts(s, "en"), "en")
    if method != "":
        return ""
    lang = lg.detect_languages([s], "en", det)[0][0]
    return "wrong_language" if lang is not None and lang != "en" else ""


SENTENCE_PARTS = ASCII_WORDS + ["Bonjour, votre commande est en route.", "Der Bestellung ist unterwegs, danke.",
                                "Su pedido está en camino y llegará pronto.", "Ваш заказ в пути.", "您的订单已发货。",
                                "Thanks for waiting, the parcel is on its way to you."]


@SETTINGS
@given(st.lists(st.lists(st.sampled_from(SENTENCE_PARTS), max_size=40).map(" ".join), min_size=1, max_size=30))
def test_language_rule_matches_the_per_row_definition(texts_):
    f = Filters(min_tokens=0, max_tokens=100_000, max_repeat_ngram_ratio=1.0, max_blank_run=1000,
                refusal_patterns=[])
    det = lg.language_detector("en")
    v = quality_verdicts(frame(texts_), f, tokenizer=student_tokenizer(), detector=det)
    want = [("empty" if not t.strip() else "encoding_error" if MOJIBAKE.search(t) else
             reference_language_reason(t, f, det)) for t in texts_]
    assert v["reason"].tolist() == want


# ---------------------------------------------------------------- language accuracy on real sentences

NON_ENGLISH = {
    "fr": ["Pour réinitialiser votre mot de passe, ouvrez la page du compte et suivez le lien que nous vous "
           "envoyons par courriel.",
           "Votre commande a été expédiée hier et devrait arriver dans trois jours ouvrables. Merci de votre "
           "patience.",
           "Pour reinitialiser votre mot de passe, ouvrez la page du compte et suivez le lien que nous vous envoyons."],
    "de": ["Um Ihr Passwort zurückzusetzen, öffnen Sie die Kontoseite und folgen Sie dem Link, den wir Ihnen per "
           "E-Mail schicken.",
           "Die Rückerstattung erfolgt innerhalb von fünf bis sieben Tagen auf Ihre Kreditkarte.",
           "Um Ihr Passwort zurueckzusetzen, oeffnen Sie die Kontoseite und folgen Sie dem Link in der E-Mail."],
    "es": ["Para restablecer tu contraseña, abre la página de la cuenta y sigue el enlace que te enviamos por "
           "correo electrónico.",
           "Tu pedido fue enviado ayer y debería llegar en tres días hábiles. Gracias por tu paciencia."],
    "pt": ["Para redefinir sua senha, abra a página da conta e siga o link que enviamos para o seu e-mail.",
           "O reembolso será feito no seu cartão de crédito dentro de cinco a sete dias."],
    "it": ["Per reimpostare la password, apri la pagina dell'account e segui il link che ti inviamo via email.",
           "Il pacco e stato spedito ieri e arrivera entro tre giorni, quindi non devi fare nulla per ora."],
    "nl": ["Om je wachtwoord opnieuw in te stellen, open je de accountpagina en volg je de link die we je per "
           "e-mail sturen.",
           "Het pakket is gisteren verzonden en komt binnen drie dagen aan, dus je hoeft niets te doen."],
    "sv": ["För att återställa ditt lösenord, öppna kontosidan och följ länken som vi skickar till dig via e-post."],
    "pl": ["Aby zresetować hasło, otwórz stronę konta i kliknij link, który wyślemy na Twój adres e-mail."],
    "tr": ["Şifrenizi sıfırlamak için hesap sayfasını açın ve size e-posta ile gönderdiğimiz bağlantıyı izleyin."],
    "ru": ["Чтобы сбросить пароль, откройте страницу учётной записи и перейдите по ссылке, которую мы отправим вам "
           "по электронной почте."],
    "zh": ["要重置密码，请打开账户页面并点击我们通过电子邮件发送给您的链接。您的订单已于昨天发货，预计三个工作日内送达。"],
    "ja": ["パスワードをリセットするには、アカウントページを開き、メールでお送りするリンクに従ってください。"
           "ご注文は昨日発送されました。"],
    "ar": ["لإعادة تعيين كلمة المرور، افتح صفحة الحساب واتبع الرابط الذي نرسله إليك عبر البريد الإلكتروني."],
    "hi": ["अपना पासवर्ड रीसेट करने के लिए, खाता पेज खोलें और उस लिंक का पालन करें जो हम आपको ईमेल से भेजते हैं।"],
    "ko": ["비밀번호를 재설정하려면 계정 페이지를 열고 이메일로 보내드린 링크를 따라가세요. 주문하신 상품은 어제 발송되었습니다."],
}
# languages outside lingua's candidate set, and other scripts embedding English words: the prescreens must leave
# them to the detector
OTHER_LATIN = [
    "Untuk mengatur ulang kata sandi Anda, buka halaman akun dan ikuti tautan yang kami kirimkan melalui email.",
    "Pentru a vă reseta parola, deschideți pagina contului și urmați linkul pe care vi-l trimitem prin e-mail.",
    "Chcete-li obnovit heslo, otevřete stránku účtu a klikněte na odkaz, který vám pošleme e-mailem.",
    "A jelszó visszaállításához nyissa meg a fiókoldalt, és kövesse az e-mailben küldött linket.",
    "Để đặt lại mật khẩu, hãy mở trang tài khoản và làm theo liên kết chúng tôi gửi qua email.",
    "Ili kuweka upya nenosiri lako, fungua ukurasa wa akaunti na ufuate kiungo tunachokutumia kwa barua pepe.",
    "Naipadala na ang pakete kahapon at darating ito sa loob ng tatlong araw, kaya wala kang kailangang gawin.",
    "For at nulstille din adgangskode skal du åbne kontosiden og følge linket, som vi sender til dig på e-mail.",
    "Nollataksesi salasanasi avaa tilisivu ja seuraa linkkiä, jonka lähetämme sinulle sähköpostitse.",
    "これは the order of the items in the list, and the refund will be sent to your account within days です。",
    "您的 refund request has been received and the support team will email you 很快 within three business days 谢谢。",
]
ENGLISH = [
    "To reset your password, open the account page, choose 'Forgot password' and follow the link we email you.",
    "Your order shipped yesterday and should arrive within three business days. Thanks for your patience!",
    "The refund will be issued to your original payment method within five to seven business days.",
    "Step 1: Open Settings. Step 2: Select Privacy. Step 3: Toggle location services off and restart the app.",
    "Photosynthesis converts light energy into chemical energy, producing glucose and oxygen from carbon dioxide.",
    "Refund processed. Tracking number emailed. Warehouse confirms parcel dispatched via express courier today.",
    "Preheat the oven, whisk eggs with sugar, fold in flour gently, then bake for twenty minutes until golden.",
    "Quarterly revenue grew twelve percent, driven by subscription renewals, enterprise upsells and lower churn.",
    "I’m happy to help — your café order (naïve roast, extra foam) is ready for pickup at the front counter.",
    "order refund account shipping password reset parcel carrier days page click email link support team help",
]
NOT_TO_DROP = [  # short, code or maths: too little prose to judge, or judged English
    "42",
    "x = 3",
    "```python\ndef add(a, b):\n    return a + b\n```",
    "```js\nconst total = items.reduce((s, x) => s + x.price, 0);\nconsole.log(total);\n```\nSums the prices.",
    "2x + 3 = 11, so 2x = 8 and x = 4.",
    "Answer: 17",
    "See https://example.com/docs/reset-password for the steps.",
    "∫₀¹ x² dx = 1/3",
    "SELECT id, total FROM orders WHERE total > 100 ORDER BY total DESC;",
]


def language_verdicts(rows, tok):
    f = Filters(min_tokens=1, max_tokens=4096, max_repeat_ngram_ratio=1.0)
    return quality_verdicts(frame(rows), f, tokenizer=tok)


def test_english_is_kept_and_mostly_settled_without_the_detector(tok):
    v = language_verdicts(ENGLISH, tok)
    assert v["keep"].all(), v[~v["keep"]].to_dict("records")
    methods = [e.get("method") for e in v["evidence"]]
    assert sum(m in ("function_word_prescreen", "lexicon_prescreen") for m in methods) >= len(ENGLISH) - 2


def test_clearly_non_english_is_dropped_and_never_settled_by_a_prescreen(tok):
    rows = [s for ss in NON_ENGLISH.values() for s in ss]
    v = language_verdicts(rows, tok)
    assert (v["reason"] == "wrong_language").all(), v[v["reason"] != "wrong_language"].to_dict("records")
    other = language_verdicts(OTHER_LATIN, tok)
    # what lingua then says is lingua's (with its candidate set, Tagalog comes out as English)
    assert not any(e.get("method") for e in other["evidence"]), other["evidence"].tolist()


def test_short_code_and_maths_are_not_dropped_for_language(tok):
    v = language_verdicts(NOT_TO_DROP, tok)
    assert (v["reason"] != "wrong_language").all(), v[v["reason"] == "wrong_language"].to_dict("records")


def test_prescreen_thresholds_leave_a_margin_on_real_text():
    """Non-English sits well below the lexicon thresholds, English well above them."""
    floor = lg.LEXICON_MIN_MEAN_LEAD_CB
    for s in [s for ss in NON_ENGLISH.values() for s in ss] + OTHER_LATIN:
        words, fw, known, lead, script_ok = prescreen_counts(language_sample(s), "en")
        method, _ = prescreen_decision(words, fw, known, lead, script_ok, "en")
        assert method == "", s
        assert not script_ok or not words or lead / words < floor - 50 or known / words < 0.75, s
    for s in ENGLISH[:8]:
        words, fw, known, lead, _ = prescreen_counts(language_sample(s), "en")
        assert lead / words >= floor + 10 and known / words >= 0.85, s


def test_benchmark_word_salad_is_settled_by_the_lexicon(tok):
    rng = random.Random(0)
    vocab = ("order refund account shipping password reset parcel carrier days page click email link support team "
             "help please thanks within business warehouse return item price discount code store").split()
    rows = [" ".join(rng.choice(vocab) for _ in range(rng.randint(20, 120))) + "." for _ in range(200)]
    v = language_verdicts(rows, tok)
    assert v["keep"].all()
    assert sum(e.get("method") == "lexicon_prescreen" for e in v["evidence"]) >= 190


def test_language_head_cut_edge_cases():
    h = bk.LANGUAGE_HEAD_CHARS
    rows = [
        "word " * ((h - 3) // 5) + "xx" + "https://example.com/" + " tail" * 50,  # URL starting across the cut
        "a" * (h - 1) + " " + "b " * 100,  # first word longer than the sample
        " " * (h + 5) + "late words " * 30,  # head is all whitespace
        "\n\n".join(["short"] * 200),  # whitespace-heavy head: the head's prose may not reach the cut
        "x `code` " + "the order " * 60,
    ]
    rows.append("word " * ((h - 2) // 5) + "`" + "the order " * 40)
    fast, chars, words, fw, known, lead = bk._language_chunk(rows, "en")
    for i, t in enumerate(rows):
        if fast[i]:
            s = language_sample(t)
            assert chars[i] == len(s) and (words[i], fw[i], known[i], lead[i], True) == prescreen_counts(s, "en"), i
