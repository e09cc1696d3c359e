import re

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from distill_assets.lib.text import normalize_series, normalize_text, normalize_words, word_ngrams, word_spans


def test_normalization_lowercases_strips_punctuation_and_collapses_whitespace():
    assert normalize_words("Hello,   World!\n\tIt's  snake_case") == ["hello", "world", "it", "s", "snake", "case"]
    assert word_ngrams(["a", "b", "c", "d"], 3) == {"a b c", "b c d"}
    assert word_ngrams(["a", "b"], 3) == set()


def test_dedup_keys_delete_punctuation_where_contamination_words_split_on_it():
    assert normalize_text("State-of-the-ART!  It's\tsnake_case") == "stateoftheart its snakecase"
    assert normalize_words("State-of-the-ART!") == ["state", "of", "the", "art"]
    assert normalize_text("Straße") == "strasse"  # casefold, as the stage's Series.str.casefold
    assert normalize_text(None) == normalize_text(float("nan")) == normalize_text(pd.NA) == ""


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=30),
                          st.text(alphabet=st.sampled_from(list("aZß_-'.!? \t\n\u00a0\u2028é")), max_size=20))))
def test_normalize_text_is_normalize_series_of_one_value(values):
    assert normalize_series(pd.Series(values, dtype=object)).tolist() == [normalize_text(v) for v in values]

_WORD_ONLY = re.compile(r"[^\W_]+")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40),
                 st.text(alphabet=st.sampled_from(list("aZß_-'.:!? \t\n\u00a0İΣé`")), max_size=30)))
def test_word_spans_are_normalize_words_with_their_place_in_the_text(text):
    spans = word_spans(text)
    assert all(text[a:b] and _WORD_ONLY.fullmatch(text[a:b]) for _, a, b in spans)
    if len(text.lower()) == len(text):  # otherwise strip_text keeps the whole text when they differ
        assert [w for w, _, _ in spans] == normalize_words(text)
        assert all(normalize_words(text.lower()[a:b]) == [w] for w, a, b in spans)
