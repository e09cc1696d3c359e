"""Language identification for the quality filter's `wrong_language` rule.

The sample is the first LANGUAGE_SAMPLE_CHARS characters of prose (code and URLs removed). Two prescreens can
settle a sample as the target language (never drop it): the function-word share, then a word-frequency lexicon
(wordfreq lists of the target vs 26 other Latin-script languages). Only unsettled samples go to lingua, which
alone drops. byte_kernels.py computes the same prescreen counts over many rows at once.
"""

import hashlib
import json
import math
import os
import re
from functools import lru_cache
from importlib.metadata import version

import numpy as np

from distill_assets.lib.settings import cache_root

CODE = re.compile(r"```.*?(?:```|$)|`[^`\n]*`|https?://\S+", re.S)
LANGUAGES = ["en", "fr", "de", "es", "pt", "it", "nl", "ru", "zh", "ja", "ko", "ar", "pl", "tr", "sv", "hi"]
LANGUAGE_SAMPLE_CHARS = 200  # language id saturates long before this; longer samples only cost time


@lru_cache(maxsize=4)
def language_detector(target: str):
    """A lingua detector over common languages (plus the target), low-accuracy mode, built once."""
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder  # deferred: heavy optional dependency

    codes = sorted(set(LANGUAGES) | {target})
    langs = []
    for c in codes:
        try:
            langs.append(Language.from_iso_code_639_1(getattr(IsoCode639_1, c.upper())))
        except AttributeError:
            if c == target:
                raise ValueError(f"filters.language {target!r} is not an ISO 639-1 code lingua knows") from None
    return LanguageDetectorBuilder.from_languages(*langs).with_low_accuracy_mode().build()


FUNCTION_WORDS = {
    "en": frozenset(
        "the a an and or but if of to in on at for with by from as is are was were be been being it its this "
        "that these those i you he she we they me him her us them my your our their not no do does did have "
        "has had will would can could should may might must shall so than then there here what which who whom "
        "how when where why all any each some such only also just very more most into about over after before "
        "up out".split()
    ),
}
PRESCREEN_SHARE = 0.30  # English prose runs ~40-50% function words; other languages share almost none of them
_WORD = re.compile(r"[a-zA-Z']+")
# The prescreens see ASCII words only, so a sample with letters of another script (kana, hanzi, Cyrillic, Greek,
# ...) embedding some target-language words is left to the detector.
_NON_LATIN_LETTER = re.compile(r"[^\W\d_\u0000-\u024f\u1e00-\u1eff]")

# Lexicon prescreen: wordfreq's 'small' lists (words down to 1e-6, i.e. zipf 3) of the target and of the
# Latin-script languages whose words an ASCII tokenization can confuse with it. A word's lead is its frequency in the
# target minus its highest frequency in any competitor (centibels = 100 * log10 ratio; an absent word counts as
# being at the list floor). A sample is settled as the target when it has >= LEXICON_MIN_WORDS words, >= 80% of them
# in the target lexicon and a mean lead >= 0.25 zipf: on real text other languages sit at coverage <= 0.75 or mean
# lead <= -0.3, target-language text at mean >= 0.4 (tests/lib/filters/test_quality_speed_equivalence.py).
LEXICON_COMPETITORS = tuple("ca cs da de en es fi fil fr hu id is it lt lv ms nb nl pl pt ro sh sk sl sv tr vi".split())
LEXICON_FLOOR_CB = -600
LEXICON_MIN_WORDS = 8
LEXICON_MIN_COVERAGE = (4, 5)  # known * 5 >= words * 4
LEXICON_MIN_MEAN_LEAD_CB = 25
LEXICON_MAX_WORD = 16  # longer words are not looked up (the vectorized lookup keys words by <= 16 bytes)
_LEX_WORD = re.compile(r"[a-z']+")


def _freq_cb(f: float) -> int:
    return int(round(100 * math.log10(f)))


@lru_cache(maxsize=4)
def target_lexicon(target: str) -> dict[str, int] | None:
    """{word: lead in centibels} for the target's ASCII words (see LEXICON_*), or None without a wordfreq list.

    Reading the ~27 wordfreq lists takes 1-2 s, so the table is saved once under $DISTILL_CACHE."""
    try:  # without wordfreq the lexicon prescreen is off and the detector decides those samples
        import wordfreq  # deferred: heavy optional dependency
    except ImportError:
        return None
    if target not in wordfreq.available_languages("small"):
        return None
    recipe = hashlib.sha1(repr((LEXICON_COMPETITORS, LEXICON_FLOOR_CB, LEXICON_MAX_WORD)).encode()).hexdigest()[:10]
    cache = cache_root() / "lexicon" / f"{target}-wordfreq{version('wordfreq')}-{recipe}.json"
    try:
        return {str(k): int(v) for k, v in json.loads(cache.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        pass
    avail = wordfreq.available_languages("small")
    comps = [wordfreq.get_frequency_dict(c, "small") for c in LEXICON_COMPETITORS if c != target and c in avail]
    lex = {}
    for w, f in wordfreq.get_frequency_dict(target, "small").items():
        if len(w) <= LEXICON_MAX_WORD and _LEX_WORD.fullmatch(w):
            best = LEXICON_FLOOR_CB
            for c in comps:
                g = c.get(w)
                if g:
                    best = max(best, _freq_cb(g))
            lex[w] = _freq_cb(f) - best
    tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(lex))
        os.replace(tmp, cache)
    except OSError:
        pass
    return lex


def function_word_share(text: str, words: frozenset) -> float:
    tokens = _WORD.findall(text.lower())
    if len(tokens) < 8:
        return 0.0
    return sum(t in words for t in tokens) / len(tokens)


def prescreen_counts(sample: str, target: str) -> tuple[int, int, int, int, bool]:
    """(words, function words, lexicon words, summed lexicon lead in cB, script ok) of a language sample: the
    per-row definition of what the vectorized prescreen computes."""
    tokens = _WORD.findall(sample.lower())
    fw = FUNCTION_WORDS.get(target, frozenset())
    lex = target_lexicon(target) or {}
    known = [lex[t] for t in tokens if t in lex]
    script_ok = sample.isascii() or _NON_LATIN_LETTER.search(sample) is None
    return len(tokens), sum(t in fw for t in tokens), len(known), sum(known), script_ok


def prescreen_decision(words, fw, known, lead, script_ok, target: str):
    """(method, function-word share) per sample, method '' when no prescreen settles it; arrays or scalars.
    A prescreen only ever settles a sample as the target language: dropping is the detector's call."""
    words = np.asarray(words, dtype=np.int64)
    share = np.where(words >= 8, np.asarray(fw, dtype=np.float64) / np.maximum(words, 1), 0.0)
    ok = np.asarray(script_ok, dtype=bool) & (words >= 8)
    by_fw = ok & (share >= PRESCREEN_SHARE) if target in FUNCTION_WORDS else np.zeros_like(ok)
    by_lex = (ok & ~by_fw & (words >= LEXICON_MIN_WORDS)
              & (np.asarray(known) * LEXICON_MIN_COVERAGE[1] >= words * LEXICON_MIN_COVERAGE[0])
              & (np.asarray(lead) >= LEXICON_MIN_MEAN_LEAD_CB * words))
    if target_lexicon(target) is None:
        by_lex = np.zeros_like(by_lex)
    method = np.where(by_fw, "function_word_prescreen", np.where(by_lex, "lexicon_prescreen", ""))
    return method, share



def language_sample(text: str) -> str:
    prose = CODE.sub(" ", text)
    prose = " ".join(prose.split())
    if len(prose) > LANGUAGE_SAMPLE_CHARS:
        cut = prose.rfind(" ", 0, LANGUAGE_SAMPLE_CHARS)
        prose = prose[: cut if cut > 0 else LANGUAGE_SAMPLE_CHARS]
    return prose


def detect_languages(samples: list[str], target: str, detector=None) -> list[tuple[str | None, float, float]]:
    """(top ISO code, its confidence, the target's confidence) per sample."""
    det = detector if detector is not None else language_detector(target)
    out = []
    for vals in det.compute_language_confidence_values_in_parallel(samples):
        if not vals:
            out.append((None, 0.0, 0.0))
            continue
        top = vals[0]
        tconf = next((v.value for v in vals if v.language.iso_code_639_1.name.lower() == target), 0.0)
        out.append((top.language.iso_code_639_1.name.lower(), float(top.value), float(tconf)))
    return out
