"""What a category's own prompts share: text that is no evidence that a training row copied an eval item.

A category written in one template ("Classify the intent of this message: …") makes every seed share the
template's words with every eval item, so the 8-gram rule would flag "classify the intent of this message can i"
between two unrelated messages. Two complementary rules (settings in `Category.contamination`):

(a) affixes: the longest word prefix (and suffix) that at least `affix_share` of the category's seed and eval
    prompts start (end) with is cut off the eval texts before their n-grams are indexed, and off both sides
    before embedding. N-grams that straddle the template and the message are gone with it;
(b) frequent n-grams: an n-gram found in at least `frequent_ngram_share` of the seeds, or of the eval items (and
    in at least `shared_min_texts` of them), is boilerplate inside the texts and never counts as overlap.

Callers compute both from the category's seed and eval files (contamination.category_shared_text), never from
the training rows being checked, whose copies of one eval answer must not make that answer "frequent", nor from
held-out production failures. Words are lib/text.py's normalize_words, so the cut lands where the n-gram rules
split.
"""

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from distill_assets.lib.tasks import Contamination
from distill_assets.lib.text import normalize_words, word_ngrams, word_spans

TEXT_FIELDS = ("prompt", "reference_response")
_SEPARATORS = " \t\r\n:;,.\u2013\u2014|>"


@dataclass(frozen=True, eq=False)
class SharedText:
    """A category's template (prefix/suffix words) and frequent n-grams (n -> gram -> share of texts)."""

    prefix: tuple[str, ...] = ()
    suffix: tuple[str, ...] = ()
    ngrams: dict[int, dict[str, float]] = field(default_factory=dict)
    seeds: int = 0
    eval_items: int = 0

    def bounds(self, words: list[str]) -> tuple[int, int]:
        """words[lo:hi] is what is left of `words` once the prefix and suffix, where present, are cut."""
        lo, hi = 0, len(words)
        if self.prefix and tuple(words[:len(self.prefix)]) == self.prefix:
            lo = len(self.prefix)
        if self.suffix and hi - lo >= len(self.suffix) and tuple(words[hi - len(self.suffix):]) == self.suffix:
            hi -= len(self.suffix)
        return lo, hi

    def strip_words(self, words: list[str]) -> list[str]:
        lo, hi = self.bounds(words)
        return words[lo:hi]

    def strip_text(self, text: Any) -> str:
        """The original text without the template (what is embedded); the whole text when nothing, or
        everything, would be cut."""
        text = "" if text is None else str(text)
        if not self.prefix and not self.suffix:
            return text
        spans = word_spans(text)
        words = [w for w, _, _ in spans]
        lo, hi = self.bounds(words)
        if (lo, hi) == (0, len(words)) or lo >= hi or words != normalize_words(text):
            return text
        start = spans[lo - 1][2] if lo else 0  # right after the template's last word ...
        end = spans[hi][1] if hi < len(words) else len(text)
        return text[start:end].lstrip(_SEPARATORS).rstrip()  # ... less "Template: " separators

    def ignored(self, n: int) -> dict[str, float]:
        return self.ngrams.get(n, {})

    def summary(self, top: int = 10) -> dict[str, Any]:
        """For metadata: the cut prefix/suffix and, per n, how many n-grams are ignored and the most shared."""
        return {
            "prefix": " ".join(self.prefix), "suffix": " ".join(self.suffix),
            "ignored_ngrams": {str(n): {"count": len(g), "top": [
                {"ngram": k, "share": round(v, 3)}
                for k, v in sorted(g.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]}
                for n, g in sorted(self.ngrams.items())},
            "computed_from": {"seeds": self.seeds, "eval_items": self.eval_items},
        }

    def describe(self) -> str:
        """One clause for a check's description; empty when nothing is ignored."""
        parts = [f"{label} '{' '.join(words)}'" for label, words in (("prefix", self.prefix),
                                                                      ("suffix", self.suffix)) if words]
        n_grams = sum(len(g) for g in self.ngrams.values())
        if n_grams:
            parts.append(f"{n_grams} frequent n-gram(s)")
        return f"ignoring the category's shared {', '.join(parts)}" if parts else ""


NOTHING_SHARED = SharedText()


def _needed(share: float, n_texts: int, min_texts: int) -> int:
    return max(min_texts, math.ceil(share * n_texts - 1e-9))


def common_prefix(texts: list[list[str]], share: float, min_texts: int) -> tuple[str, ...]:
    """The longest word prefix that at least `share` of `texts` (and `min_texts` of them) start with. With
    share > 0.5 at most one prefix of each length qualifies, and each extends the one before."""
    need = _needed(share, len(texts), min_texts)
    prefix: tuple[str, ...] = ()
    for k in range(1, max((len(t) for t in texts), default=0) + 1):
        counts = Counter(tuple(t[:k]) for t in texts if len(t) >= k)
        top = counts.most_common(1)
        if not top or top[0][1] < need:
            break
        prefix = top[0][0]
    return prefix


def _items(df: pd.DataFrame | None) -> list[dict[str, list[str]]]:
    if df is None or df.empty:
        return []
    cols = [c for c in TEXT_FIELDS if c in df.columns]
    return [{c: normalize_words(r.get(c)) for c in cols} for r in df[cols].to_dict("records")]


def frequent_ngrams(collections: Iterable[list[list[list[str]]]], n: int, share: float,
                    min_texts: int) -> dict[str, float]:
    """gram -> the highest share of items (of one collection) it occurs in, for grams at or above `share`;
    an item is a list of word lists (its fields), counted once however often the gram recurs in it."""
    out: dict[str, float] = {}
    for items in collections:
        if not items:
            continue
        need = _needed(share, len(items), min_texts)
        counts = Counter(g for item in items for g in set().union(*(word_ngrams(w, n) for w in item)))
        for g, c in counts.items():
            if c >= need:
                out[g] = max(out.get(g, 0.0), c / len(items))
    return out


def find_shared_text(seeds: pd.DataFrame | None, evalset: pd.DataFrame, cfg: Contamination) -> SharedText:
    """The category's shared text from its seeds (prompt, reference_response; None: the eval items alone) and
    eval items. Nothing is shared unless enough texts agree (`shared_min_texts`)."""
    collections = [_items(seeds), _items(evalset)]
    prompts = [item.get("prompt", []) for items in collections for item in items]
    prefix: tuple[str, ...] = ()
    suffix: tuple[str, ...] = ()
    if cfg.strip_shared_affixes:
        prefix = common_prefix(prompts, cfg.affix_share, cfg.shared_min_texts)
        rest = [p[len(prefix):] if tuple(p[:len(prefix)]) == prefix else p for p in prompts]
        suffix = tuple(reversed(common_prefix([r[::-1] for r in rest], cfg.affix_share, cfg.shared_min_texts)))
    cut = SharedText(prefix=prefix, suffix=suffix)
    ngrams: dict[int, dict[str, float]] = {}
    if cfg.ignore_frequent_ngrams:
        stripped = [[[cut.strip_words(w) for w in item.values()] for item in items] for items in collections]
        for n in sorted({cfg.ngram_long, cfg.ngram_short}):
            found = frequent_ngrams(stripped, n, cfg.frequent_ngram_share, cfg.shared_min_texts)
            if found:
                ngrams[n] = found
    return SharedText(prefix=prefix, suffix=suffix, ngrams=ngrams, seeds=len(collections[0]),
                      eval_items=len(collections[1]))
