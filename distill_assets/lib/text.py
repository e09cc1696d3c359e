"""The one text normalizer of the filters and checks: dedup keys and contamination n-grams.

Both share one punctuation class (anything that is neither a word character nor whitespace, plus `_`) and
collapse whitespace. They differ in what punctuation does, on purpose:
- dedup keys (`normalize_series`, and `normalize_text` for one string) casefold and DELETE punctuation:
  "State-of-the-art!" and "stateoftheart" are one key. This is the rule the `deduplicated` stage ships with; the
  dedup check calls the same functions, so it cannot flag a pair the stage kept;
- contamination words (`normalize_words`) lower-case and SPLIT on punctuation: "state-of-the-art" is four words
  and "it's" is "it", "s", so eval n-grams are still found through hyphens and apostrophes.
"""

import math
import re
from typing import Any

import pandas as pd

PUNCTUATION = re.compile(r"[^\w\s]|_", re.UNICODE)
_WORD = re.compile(r"[^\W_]+", re.UNICODE)  # what PUNCTUATION and whitespace leave: one word each
_SPACES = re.compile(r"\s+")


def _missing(text: Any) -> bool:
    return text is None or (isinstance(text, float) and math.isnan(text))


# ---------------------------------------------------------------- dedup keys

def normalize_series(s: pd.Series) -> pd.Series:
    """casefold, strip punctuation, collapse whitespace (vectorized)."""
    out = s.fillna("").astype(str).str.casefold()
    out = out.str.replace(PUNCTUATION.pattern, "", regex=True)
    return out.str.replace(_SPACES.pattern, " ", regex=True).str.strip()


def normalize_text(text: Any) -> str:
    """normalize_series of one value: casefold, punctuation deleted, whitespace collapsed and stripped."""
    if _missing(text) or text is pd.NA:  # what Series.fillna("") fills
        return ""
    return _SPACES.sub(" ", PUNCTUATION.sub("", str(text).casefold())).strip()


# ---------------------------------------------------------------- contamination words and n-grams

def normalize_words(text: Any) -> list[str]:
    """Lower-case, punctuation to spaces, split on any whitespace (so runs collapse)."""
    if _missing(text):
        return []
    return PUNCTUATION.sub(" ", str(text).lower()).split()


def word_ngrams(words: list[str], n: int) -> set[str]:
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def word_spans(text: Any) -> list[tuple[str, int, int]]:
    """normalize_words with where each word sits in `text`: (word, start, end). Used to cut a shared template
    off the original text (what gets embedded) at the same word the n-gram rules cut it."""
    if _missing(text):
        return []
    text = str(text)
    lowered = text.lower()  # in context: a final sigma lower-cases differently from the same letter alone
    source = lowered if len(lowered) == len(text) else text
    return [(w, m.start(), m.end()) for m in _WORD.finditer(text) for w in normalize_words(source[m.start():m.end()])]
