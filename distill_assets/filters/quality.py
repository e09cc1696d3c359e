"""`quality_filtered`: the guide's filter 1 (basic quality), cheap vectorized rules run before anything costly.

Rules, in order; a dropped row records the FIRST rule it fails:
  empty, encoding_error, too_short, too_long, refusal, excess_whitespace, repetitive, wrong_language.
A row whose raw record is malformed (messages not JSON, wrong roles/order, non-string content, missing
response) is `quarantined` with the parse problem as reason: it is neither trained on nor silently lost.

Speed (benchmarks/basic_filters.py: 200k rows in ~5 s on 2 shared cores): one bulk pass encodes each chunk of rows
into a UTF-8 buffer and computes per-row features with numpy over the bytes; the exact per-row rule (a regex, the
n-gram set, the tokenizer, the language detector) then runs only on the rows the features cannot decide. Each
shortcut is a bound or a superset, so the verdicts are those of the per-row rules
(tests/filters/test_quality_speed_equivalence.py checks them against the plain per-row definitions):

- length: token counts use the student tokenizer (SmolLM2, read from the packaged GGUF). For its byte-level BPE
  `max(ceil(bytes / longest token), words) <= tokens <= bytes + 1` (words = runs of non-whitespace: ByteLevel
  pre-tokenization never joins two of them), so only rows inside the undecided band are tokenized; evidence has the
  exact `tokens` where they were counted and `tokens_at_most` / `tokens_at_least` + `bound` where a bound decided.
- encoding / refusal / whitespace: a byte scan (mojibake lead bytes, control bytes), literals that every match of
  the refusal regexes must contain (found with bytes.find) and newline counts pick the candidate rows; the regex
  decides on those.
- repetition: word 4-grams are hashed in numpy; hash merges can only lower the distinct count, so a row whose hashed
  ratio is within the limit is within it exactly, and the others are recounted with Python sets.
- language: the sample and its ASCII words are computed from the bytes too. Two prescreens can settle a sample as
  the target language (never drop it): the function-word share, then a word-frequency lexicon (wordfreq lists of the
  target vs 26 other Latin-script languages). Only the unsettled samples go to lingua, which alone drops.
Rows with characters a byte path cannot reproduce (casefolding, Unicode whitespace, other scripts, code in the
language sample) take the per-row definition. DISTILL_FILTER_THREADS > 1 runs the bulk pass on more threads.
"""


import hashlib
import json
import math
import os
import re
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import dagster as dg
import numpy as np
import pandas as pd

from distill_assets.partitions import CATEGORY
from distill_assets.stages import annotate, kept, publish_stage
from distill_assets.tasks import Category, Filters, load_tasks
from resources.store import DuckDBStore

# ---------------------------------------------------------------- student tokenizer

def _cache_root() -> Path:
    return Path(os.environ.get("DISTILL_CACHE") or (Path.home() / ".cache" / "distill"))


def _tokenizer_cache_dir(gguf: Path) -> Path:
    st = gguf.stat()
    return _cache_root() / "tokenizers" / f"{gguf.stem}-{st.st_size}"


@lru_cache(maxsize=2)
def student_tokenizer(gguf_path: str | None = None):
    """The student's tokenizer (with its chat template) from the packaged SmolLM2 GGUF.

    Converting the GGUF vocabulary takes ~10 s, so the converted tokenizer is saved once under
    $DISTILL_CACHE (default ~/.cache/distill) and reloaded from there (< 1 s)."""
    from transformers import AutoTokenizer

    from distill_assets.settings import embedded_teacher_gguf

    gguf = Path(gguf_path) if gguf_path else embedded_teacher_gguf()
    cache = _tokenizer_cache_dir(gguf)
    if (cache / "tokenizer.json").exists():
        try:
            return AutoTokenizer.from_pretrained(str(cache))
        except Exception:  # a corrupt cache is rebuilt below
            pass
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
    try:
        tok.save_pretrained(str(tmp))
        cache.parent.mkdir(parents=True, exist_ok=True)
        if cache.exists():
            import shutil

            shutil.rmtree(cache, ignore_errors=True)
        os.replace(tmp, cache)
    except OSError:
        pass  # an unwritable cache only costs the conversion next time
    return tok


def count_tokens(texts: list[str], tokenizer=None) -> np.ndarray:
    """Student-token counts (no special tokens) of `texts`, batch-tokenized."""
    if not texts:
        return np.zeros(0, dtype=np.int64)
    tok = tokenizer if tokenizer is not None else student_tokenizer()
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        return np.fromiter((len(e.ids) for e in backend.encode_batch_fast(list(texts), add_special_tokens=False)),
                           dtype=np.int64, count=len(texts))
    ids = tok(list(texts), add_special_tokens=False)["input_ids"]
    return np.array([len(x) for x in ids], dtype=np.int64)


def max_token_bytes(tokenizer=None) -> int:
    """UTF-8 length of the longest vocabulary entry: a lower bound of tokens is ceil(bytes / this)."""
    tok = tokenizer if tokenizer is not None else student_tokenizer()
    cached = getattr(tok, "_distill_max_token_bytes", None)
    if cached:
        return cached
    vocab = tok.get_vocab()
    longest = 1
    for t in vocab:
        s = tok.convert_tokens_to_string([t])
        longest = max(longest, len(s.encode("utf-8")), len(t.encode("utf-8")))
    try:
        tok._distill_max_token_bytes = longest
    except AttributeError:
        pass
    return longest


def token_bounds(tokenizer=None) -> str:
    """Which cheap bounds of the token count hold for this tokenizer.

    'words': byte-level BPE without a normalizer whose added tokens hold no inner whitespace, so
             max(ceil(bytes / longest), runs of non-whitespace) <= tokens <= bytes + 1;
    'bytes': only the two byte bounds hold (no regex pre-split, so a token may span a space);
    'none':  anything else (a normalizer can change the length): every row is counted exactly."""
    tok = tokenizer if tokenizer is not None else student_tokenizer()
    cached = getattr(tok, "_distill_token_bounds", None)
    if cached:
        return cached
    kind = "none"
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        try:
            spec = json.loads(backend.to_str())
        except Exception:
            spec = {}
        pre = spec.get("pre_tokenizer") or {}
        pres = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
        if (spec.get("normalizer") is None and (spec.get("model") or {}).get("type") == "BPE"
                and len(pres) == 1 and pres[0].get("type") == "ByteLevel"):
            inner_ws = any(re.search(r"\S\s+\S", a.get("content", "")) for a in spec.get("added_tokens", []))
            kind = "words" if pres[0].get("use_regex", True) and not inner_ws else "bytes"
    try:
        tok._distill_token_bounds = kind
    except AttributeError:
        pass
    return kind


def length_tokens(texts: pd.Series, need: np.ndarray, tokenizer=None) -> np.ndarray:
    """Exact token counts where `need` is True (unique texts tokenized once), -1 elsewhere."""
    out = np.full(len(texts), -1, dtype=np.int64)
    idx = np.flatnonzero(need)
    if len(idx):
        sub = texts.iloc[idx]
        codes, uniq = pd.factorize(sub, sort=False)
        counts = count_tokens([str(u) for u in uniq], tokenizer)
        out[idx] = counts[codes]
    return out


# ---------------------------------------------------------------- parsing / quarantine

def parse_record(messages: Any, response: Any, has_response_col: bool) -> tuple[str | None, str, str, str]:
    """(problem or None, system, user, assistant) of one raw row's `messages` JSON."""
    if messages is None or (isinstance(messages, float) and math.isnan(messages)):
        return "missing_messages", "", "", ""
    if isinstance(messages, str):
        try:
            msgs = json.loads(messages)
        except (json.JSONDecodeError, RecursionError):
            return "invalid_messages_json", "", "", ""
    else:
        msgs = messages
    if not isinstance(msgs, list) or not msgs:
        return "messages_not_a_list", "", "", ""
    if not all(isinstance(m, dict) for m in msgs):
        return "message_not_an_object", "", "", ""
    roles = [m.get("role") for m in msgs]
    if roles not in (["system", "user", "assistant"], ["user", "assistant"]):
        return "wrong_roles_or_order", "", "", ""
    for m in msgs:
        if not isinstance(m.get("content"), str):
            return "non_string_content", "", "", ""
    system = msgs[0]["content"] if roles[0] == "system" else ""
    user, assistant = msgs[-2]["content"], msgs[-1]["content"]
    if has_response_col:
        if response is None or (isinstance(response, float) and math.isnan(response)):
            return "missing_response", system, user, assistant
        if not isinstance(response, str):
            return "non_string_response", system, user, assistant
        if response != assistant:
            return "response_mismatch", system, user, assistant
    return None, system, user, assistant


def _parse_rows(messages: list, responses: list, has_response_col: bool) -> tuple[list, list, list]:
    """parse_record over all rows: (problems, users, assistants). The common well-formed shape is checked inline
    with json's own C scanner (what json.loads runs, minus its wrapper); anything else goes through parse_record,
    so the results are its."""
    scan = json.JSONDecoder().scan_once
    problems: list = [None] * len(messages)
    users: list = [""] * len(messages)
    assistants: list = [""] * len(messages)
    for i, (m, r) in enumerate(zip(messages, responses)):
        if type(m) is str and m[:1] == "[" and (not has_response_col or type(r) is str):
            try:
                v, end = scan(m, 0)
            except (StopIteration, ValueError, RecursionError):
                v, end = None, -1
            if end == len(m) and type(v) is list:
                if len(v) == 3:
                    s0, u, a = v
                    ok = (type(s0) is dict and s0.get("role") == "system" and type(s0.get("content")) is str)
                elif len(v) == 2:
                    u, a = v
                    ok = True
                else:
                    ok = False
                if ok and type(u) is dict and type(a) is dict and u.get("role") == "user" \
                        and a.get("role") == "assistant":
                    uc, ac = u.get("content"), a.get("content")
                    if type(uc) is str and type(ac) is str and (not has_response_col or r == ac):
                        users[i], assistants[i] = uc, ac
                        continue
        p, _, u, a = parse_record(m, r, has_response_col)
        problems[i], users[i], assistants[i] = p, u, a
    return problems, users, assistants


# ---------------------------------------------------------------- rules

# U+FFFD, classic UTF-8-read-as-cp1252/latin-1 mojibake, C0 controls other than \n, \t (a \r is allowed only as
# part of \r\n line endings) and lone surrogates (undecodable escapes; no tokenizer or detector accepts them).
MOJIBAKE = re.compile(
    "\ufffd"
    "|[\u00c3\u00c2][\u0080-\u00bf]"
    "|\u00e2\u20ac[\u0080-\u00bf\u2018-\u203a\u2122\u0153\u0161\u017e\u0178\u02dc\u02c6\u201d\u201c]?"
    "|\u00c3[\u0192\u2020\u2021\u0161\u00a9\u00a8]"
    "|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)"
    "|[\ud800-\udfff]"
)
BLANK_RUN = re.compile(r"(?:[ \t]*\n){3,}")
CODE = re.compile(r"```.*?(?:```|$)|`[^`\n]*`|https?://\S+", re.S)

LANGUAGES = ["en", "fr", "de", "es", "pt", "it", "nl", "ru", "zh", "ja", "ko", "ar", "pl", "tr", "sv", "hi"]
LANGUAGE_SAMPLE_CHARS = 200  # language id saturates long before this; longer samples only cost time


@lru_cache(maxsize=4)
def language_detector(target: str):
    """A lingua detector over common languages (plus the target), low-accuracy mode, built once."""
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

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
# lead <= -0.3, target-language text at mean >= 0.4 (tests/filters/test_quality_speed_equivalence.py).
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
    try:
        import wordfreq
        from importlib.metadata import version
    except ImportError:
        return None
    if target not in wordfreq.available_languages("small"):
        return None
    recipe = hashlib.sha1(repr((LEXICON_COMPETITORS, LEXICON_FLOOR_CB, LEXICON_MAX_WORD)).encode()).hexdigest()[:10]
    cache = _cache_root() / "lexicon" / f"{target}-wordfreq{version('wordfreq')}-{recipe}.json"
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


def repeat_ngram_ratio(text: str, n: int = 4) -> float:
    """Share of word n-grams that repeat an earlier one (0 = all distinct)."""
    w = text.casefold().split()
    if len(w) < n + 1:
        return 0.0
    grams = list(zip(*(w[i:] for i in range(n))))
    return 1.0 - len(set(grams)) / len(grams)


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


# ---------------------------------------------------------------- refusal prefilter: required literals

try:  # the regex parser of the re module (3.11+); without it every row is a refusal candidate
    from re import _constants as _sre_c
    from re import _parser as _sre_p
    _REPEATS = (_sre_c.MAX_REPEAT, _sre_c.MIN_REPEAT, getattr(_sre_c, "POSSESSIVE_REPEAT", _sre_c.MAX_REPEAT))
except ImportError:  # pragma: no cover
    _sre_c = _sre_p = None
_FIN_MAX = 8  # largest finite set of strings tracked per regex piece


def _fin_item(item) -> set[str] | None:
    """The finite set of strings one parsed regex item matches (zero-width items match ''), or None."""
    op, av = item
    if op is _sre_c.LITERAL:
        return {chr(av)}
    if op is _sre_c.AT:
        return {""}
    if op is _sre_c.IN:
        chars: set[str] = set()
        for o, a in av:
            if o is _sre_c.LITERAL:
                chars.add(chr(a))
            elif o is _sre_c.RANGE and a[1] - a[0] < _FIN_MAX:
                chars.update(chr(c) for c in range(a[0], a[1] + 1))
            else:
                return None
        return chars if len(chars) <= _FIN_MAX else None
    if op is _sre_c.SUBPATTERN:
        _, add_flags, _, sub = av
        return None if add_flags & re.IGNORECASE else _fin_seq(sub)
    if op is _sre_c.BRANCH:
        out: set[str] = set()
        for b in av[1]:
            f = _fin_seq(b)
            if f is None:
                return None
            out |= f
        return out if len(out) <= _FIN_MAX else None
    if op in _REPEATS:
        lo, hi, sub = av
        f = _fin_seq(sub)
        if f is None or hi > 3:
            return None
        out, cur = set(), {""}
        for k in range(hi + 1):
            if k >= lo:
                out |= cur
            cur = {a + b for a in cur for b in f}
            if len(cur) > _FIN_MAX:
                return None
        return out if len(out) <= _FIN_MAX else None
    return None


def _fin_seq(items) -> set[str] | None:
    acc = {""}
    for it in items:
        f = _fin_item(it)
        if f is None:
            return None
        acc = {a + b for a in acc for b in f}
        if len(acc) > _FIN_MAX:
            return None
    return acc


def _req_seq(items, choose: Callable[[list[frozenset]], frozenset]) -> list[frozenset]:
    """Sets of strings of which every match of the sequence contains at least one (each set is a valid prefilter).
    `choose` picks one set per alternative of an inner branch (their union is then required)."""
    cands: list[frozenset] = []
    acc = {""}

    def flush():
        if acc and "" not in acc:
            cands.append(frozenset(acc))

    for it in items:
        f = _fin_item(it)
        if f is not None:
            prod = {a + b for a in acc for b in f}
            if len(prod) <= _FIN_MAX:
                acc = prod
            else:
                flush()
                acc = set(f)
            continue
        flush()
        acc = {""}
        op, av = it
        if op is _sre_c.SUBPATTERN and not av[1] & re.IGNORECASE:
            cands += _req_seq(av[3], choose)
        elif op is getattr(_sre_c, "ATOMIC_GROUP", None):
            cands += _req_seq(av, choose)
        elif op in _REPEATS and av[0] >= 1:
            cands += _req_seq(av[2], choose)
        elif op is _sre_c.BRANCH:
            per = [_req_seq(b, choose) for b in av[1]]
            if all(per):
                cands.append(frozenset().union(*(choose(p) for p in per)))
    flush()
    return cands


def _common_substrings(s: frozenset, min_len: int = 3) -> list[frozenset]:
    """Maximal substrings that every string of `s` contains, as one-needle requirement sets."""
    x = min(s, key=len)
    found: list[str] = []
    for ln in range(len(x), min_len - 1, -1):
        for i in range(len(x) - ln + 1):
            sub = x[i:i + ln]
            if not any(sub in f for f in found) and all(sub in y for y in s):
                found.append(sub)
    return [frozenset([f]) for f in found]


def refusal_literals(pattern: str, sample: list[str]) -> list[str] | None:
    """Strings of which every match of `pattern` contains one, chosen to be few and rare in `sample` (each needle
    is one scan of the text, each row holding one costs a regex search); None when some alternative of the pattern
    has no literal it must contain (then every row is a candidate)."""
    if _sre_p is None:
        return None
    try:
        parsed = _sre_p.parse(pattern)
    except re.error:
        return None
    if parsed.state.flags & re.IGNORECASE:
        return None

    def cost(s: frozenset) -> tuple[float, int]:
        hits = sum(any(x in t for x in s) for t in sample) / max(len(sample), 1)
        return len(s) + 20 * hits, -min(len(x) for x in s)

    def choose(cands: list[frozenset]) -> frozenset:
        return min(cands + [c for s in cands if len(s) > 1 for c in _common_substrings(s)], key=cost)

    cands = _req_seq(list(parsed), choose)
    if not cands:
        return None
    out = choose(cands)
    return sorted(x for x in out if not any(y != x and y in x for y in out))


# ---------------------------------------------------------------- vectorized text features

_CHUNK_ROWS = 8192
_MASK8 = np.array([0] + [(1 << (8 * k)) - 1 for k in range(1, 8)] + [2 ** 64 - 1], dtype=np.uint64)
_K1, _K2, _K3 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_G = [np.uint64(c) for c in (0xD6E8FEB86659FD93, 0xA0761D6478BD642F, 0xE7037ED1A0B428DB, 0x8EBC6AF09C88C6E3)]


def _mix(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> np.uint64(30))) * _K2
    x = (x ^ (x >> np.uint64(27))) * _K3
    return x ^ (x >> np.uint64(31))


def _runs(word: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the runs of True (the mask must end with False: the buffers are padded)."""
    edge = word[1:] != word[:-1]
    pos = np.flatnonzero(edge) + 1
    if word[0]:
        pos = np.concatenate([[0], pos])
    return pos[0::2], pos[1::2]


def _rows_of_sorted(pos: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Row of each (sorted) buffer position: one search per row, not per position."""
    first = np.searchsorted(pos, starts)
    return np.repeat(np.arange(len(starts)), np.diff(first, append=len(pos)))


def _row_of(starts: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return np.searchsorted(starts, pos, side="right") - 1


def _load8(buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Little-endian uint64 of the 8 bytes at each position (buf padded with >= 8 bytes)."""
    win = np.ndarray((buf.size - 7,), dtype="<u8", buffer=buf, strides=(1,))
    return win[pos]


def _word_parts(buf: np.ndarray, s: np.ndarray, e: np.ndarray):
    """(first 8 bytes, last 8 bytes, length): the exact identity of a word of <= 16 bytes."""
    ln = e - s
    first = _load8(buf, s) & _MASK8[np.minimum(ln, 8)]
    last = _load8(buf, np.maximum(e - 8, 0))
    last[ln <= 8] = 0
    return first, last, ln


def _word_key(first, last, ln) -> np.ndarray:
    """Hash of a word's parts (the table confirms a hit on the parts themselves); never 0 (the empty slot)."""
    return ((first * _K1) ^ (last * _K2) ^ (ln.astype(np.uint64) * _K3)) * _K2 | np.uint64(1)


def _lower_ascii(b: np.ndarray) -> np.ndarray:
    return b | (((b >= 65) & (b <= 90)).view(np.uint8) << np.uint8(5))


def _encode(texts: list[str]) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(joined UTF-8 with ' ' between rows, padded buffer, row starts, row byte lengths, row is ASCII)."""
    asc = np.fromiter(map(str.isascii, texts), dtype=bool, count=len(texts))
    nb = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    for i in np.flatnonzero(~asc):
        nb[i] = len(texts[i].encode("utf-8", "surrogatepass"))
    blob = " ".join(texts).encode("utf-8", "surrogatepass")
    starts = np.zeros(len(texts), dtype=np.int64)
    np.cumsum(nb[:-1] + 1, out=starts[1:])
    return blob, np.frombuffer(blob + bytes(16), dtype=np.uint8), starts, nb, asc


def _rows_containing(blob: bytes, starts: np.ndarray, nb: np.ndarray, needles: list[bytes]) -> np.ndarray:
    """Rows whose text contains any needle (bytes.find over the joined buffer, skipping to the next row on a hit)."""
    hit = np.zeros(len(starts), dtype=bool)
    for nd in needles:
        i = blob.find(nd)
        while i >= 0:
            r = int(np.searchsorted(starts, i, side="right")) - 1
            hit[r] = True
            i = blob.find(nd, int(starts[r] + nb[r]) + 1)
    return hit


def mojibake_candidates(texts: list[str]) -> np.ndarray:
    """Rows that MOJIBAKE may match: a control byte (a \\r not before \\n), DEL, or a lead byte of U+FFFD, of
    Â/Ã/â or of a surrogate. Every MOJIBAKE alternative starts with one of these, so other rows cannot match."""
    out = np.zeros(len(texts), dtype=bool)
    for a in range(0, len(texts), _CHUNK_ROWS):
        _, buf, starts, nb, _ = _encode(texts[a:a + _CHUNK_ROWS])
        out[a:a + len(starts)] = _mojibake_rows(buf, starts, int(starts[-1] + nb[-1]))
    return out


def _mojibake_rows(buf, starts, total) -> np.ndarray:
    body = buf[:total]
    p = np.flatnonzero((body < 32) & (body != 10) & (body != 9))
    p = p[(body[p] != 13) | (buf[p + 1] != 10)]
    q = np.flatnonzero(body >= 0x7F)
    v = body[q]
    q = q[(v == 0x7F) | (v == 0xC3) | (v == 0xEF) | (v == 0xED)]
    out = np.zeros(len(starts), dtype=bool)
    out[_row_of(starts, np.concatenate([p, q]))] = True
    return out


@lru_cache(maxsize=1)
def _bmp_safety() -> tuple[np.ndarray, np.ndarray]:
    """Per BMP code point: (n-gram safe, language safe). A row whose non-ASCII characters are all safe gets the
    per-row definition from the byte path: n-gram safe = casefold() leaves it alone and it is not whitespace (so
    casefold().split() is ASCII lowercasing + splitting at bytes <= 0x20); language safe = not whitespace, its lower()
    holds none of [a-zA-Z'] and it is no letter outside the Latin ranges (so the ASCII-word prescreen and the
    script guard see what the bytes show)."""
    ng = np.zeros(0x10000, dtype=bool)
    lang = np.zeros(0x10000, dtype=bool)
    for cp in range(0x80, 0x10000):
        c = chr(cp)
        if c.isspace():
            continue
        ng[cp] = c.casefold() == c
        lang[cp] = _WORD.search(c.lower()) is None and _NON_LATIN_LETTER.match(c) is None
    return ng, lang


def _unsafe_rows(buf: np.ndarray, starts: np.ndarray, total: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows with a character the n-gram byte path cannot take, rows the language byte path cannot take)."""
    body = buf[:total]
    p = np.flatnonzero(body >= 0xC0)  # lead bytes of non-ASCII characters
    ng_bad = np.zeros(len(starts), dtype=bool)
    lang_bad = np.zeros(len(starts), dtype=bool)
    if len(p):
        b0, b1, b2 = (buf[p + i].astype(np.int64) for i in range(3))
        cp = np.where(b0 < 0xE0, ((b0 & 0x1F) << 6) | (b1 & 0x3F),
                      ((b0 & 0x0F) << 12) | ((b1 & 0x3F) << 6) | (b2 & 0x3F))
        four = b0 >= 0xF0  # outside the BMP: no table, per-row path
        cp = np.where(four, 0, cp)
        ng, lang = _bmp_safety()
        rows = _row_of(starts, p)
        ng_bad[rows[four | ~ng[cp]]] = True
        lang_bad[rows[four | ~lang[cp]]] = True
    return ng_bad, lang_bad


def ngram_ratio_upper(texts: list[str], n: int = 4) -> np.ndarray:
    """An upper bound of repeat_ngram_ratio per text (exact unless two distinct n-grams share a 40-bit hash)."""
    out = np.zeros(len(texts))
    for a in range(0, len(texts), _CHUNK_ROWS):
        chunk = texts[a:a + _CHUNK_ROWS]
        _, buf, starts, nb, asc = _encode(chunk)
        bad = _unsafe_rows(buf, starts, int(starts[-1] + nb[-1]))[0]
        out[a:a + len(chunk)] = _ngram_chunk(chunk, buf, starts, bad, n)
    return out


def _ngram_chunk(chunk, buf, starts, bad, n=4, runs=None, low=None):
    """ngram_ratio_upper of a chunk; `bad`: rows whose characters the byte path cannot take as they are."""
    other = np.flatnonzero(bad)
    if not len(other):
        return _ngram_ascii(len(chunk), buf, starts, n, runs, low)
    # those rows casefolded + whitespace-split as repeat_ngram_ratio does, re-joined with single spaces
    norm = [" ".join(chunk[i].casefold().split()) for i in other]
    if len(other) * 4 > len(chunk):  # many: one pass over the chunk with those rows replaced
        chunk = list(chunk)
        for i, t in zip(other, norm):
            chunk[i] = t
        return _ngram_ascii(len(chunk), *_encode(chunk)[1:3], n)
    out = _ngram_ascii(len(chunk), buf, starts, n, runs, low)
    out[other] = _ngram_ascii(len(norm), *_encode(norm)[1:3], n)
    return out


def _ngram_ascii(m, buf, starts, n=4, runs=None, low=None):
    """The bound for rows whose words are ASCII-lowercasable runs of bytes > 0x20."""
    if low is None:
        low = _lower_ascii(buf)
    if runs is None:
        # bytes <= 0x20 are whitespace: the rows this rule sees hold no other control bytes (encoding rule)
        runs = _runs(buf > 32)
    s, e = runs
    rows = _rows_of_sorted(s, starts)
    nw = np.bincount(rows, minlength=m)
    distinct = np.zeros(m, dtype=np.int64)
    if len(s) >= n:
        # a word is keyed by its first 8 bytes and its length: merging two words can only lower the distinct
        # count, i.e. raise the bound; rows over the limit are recounted exactly anyway
        ln = e - s
        keys = (_load8(low, s) & _MASK8[np.minimum(ln, 8)]) * _K1 ^ ln.astype(np.uint64) * _K3
        k = len(s) - n + 1
        same = np.flatnonzero(rows[:k] == rows[n - 1:])
        g = keys[same] * _G[0]
        for j in range(1, n):
            g += keys[same + j] * _G[j]
        key = (rows[same].astype(np.uint64) << np.uint64(40)) | (_mix(g) >> np.uint64(24))
        key.sort()
        first = np.empty(len(key), dtype=bool)
        first[:1] = True
        np.not_equal(key[1:], key[:-1], out=first[1:])
        distinct = np.bincount((key[first] >> np.uint64(40)).astype(np.int64), minlength=m)
    grams = np.maximum(nw - (n - 1), 1)
    return np.where(nw >= n + 1, 1.0 - distinct / grams, 0.0)


class _LexTable:
    """Open-addressing hash table of words (exact: a hit is confirmed on the word's bytes) with attributes."""

    def __init__(self, words: dict[str, tuple[int, int, int]]):
        items = sorted(words.items())
        blob = " ".join(w for w, _ in items).encode()
        buf = np.frombuffer(blob + bytes(16), dtype=np.uint8)
        first, last, ln = _word_parts(buf, *_runs(buf > 32))
        key = _word_key(first, last, ln)
        self.bits = max(10, int(np.ceil(np.log2(max(len(items), 1) * 8))))
        size = 1 << self.bits
        self.key = np.zeros(size, dtype=np.uint64)
        self.first, self.last = np.zeros(size, dtype=np.uint64), np.zeros(size, dtype=np.uint64)
        self.len = np.zeros(size, dtype=np.int64)
        self.fw, self.known, self.lead = (np.zeros(size, dtype=np.int64) for _ in range(3))
        self.probes = 1
        home = (key >> np.uint64(64 - self.bits)).astype(np.int64)
        for j, (_, (fw, known, lead)) in enumerate(items):
            slot, p = int(home[j]), 1
            while self.key[slot]:
                slot, p = (slot + 1) & (size - 1), p + 1
            self.key[slot], self.first[slot], self.last[slot], self.len[slot] = key[j], first[j], last[j], ln[j]
            self.fw[slot], self.known[slot], self.lead[slot] = fw, known, lead
            self.probes = max(self.probes, p)

    def lookup(self, first, last, ln) -> np.ndarray:
        """Slot of each word, -1 when absent (or longer than LEXICON_MAX_WORD)."""
        key = _word_key(first, last, ln)
        slot = (key >> np.uint64(64 - self.bits)).astype(np.int64)
        out = np.full(len(key), -1, dtype=np.int64)
        pending = np.flatnonzero(ln <= LEXICON_MAX_WORD)
        mask = len(self.key) - 1
        for p in range(self.probes):
            s = (slot[pending] + p) & mask
            k = self.key[s]
            hit = k == key[pending]
            out[pending[hit]] = s[hit]
            pending = pending[~hit & (k != 0)]
            if not len(pending):
                break
        f = out >= 0
        i = out[f]
        f[f] = (self.first[i] == first[f]) & (self.last[i] == last[f]) & (self.len[i] == ln[f])
        out[~f] = -1
        return out


@lru_cache(maxsize=4)
def _lex_table(target: str) -> _LexTable:
    lex = target_lexicon(target) or {}
    fw = FUNCTION_WORDS.get(target, frozenset())
    words = {w: (int(w in fw), 1, v) for w, v in lex.items()}
    for w in fw:
        if w not in words:
            words[w] = (1, 0, 0)
    return _LexTable(words)


LANGUAGE_HEAD_CHARS = 320  # the sample comes from the first 200 prose characters: the bulk pass reads this far


def _language_chunk(chunk: list[str], target: str):
    """Vectorized language_sample + prescreen_counts, from the first LANGUAGE_HEAD_CHARS characters of each row.

    A row takes this path when its head holds no code or URL start, its non-ASCII characters there are language
    safe, and the head settles the sample (it is the whole text, or its prose runs past the 200-character cut, which
    then falls after a word: code or text further on cannot change the sample).
    Returns (fast, sample_chars, words, function_words, known, lead); rows with fast False need the per-row path."""
    m = len(chunk)
    heads = [t[:LANGUAGE_HEAD_CHARS] for t in chunk]
    whole = np.fromiter((len(t) <= LANGUAGE_HEAD_CHARS for t in chunk), dtype=bool, count=m)
    blob, buf, starts, nb, asc = _encode(heads)
    total = int(starts[-1] + nb[-1])
    fast = ~_unsafe_rows(buf, starts, total)[1] & ~_rows_containing(blob, starts, nb, [b"`", b"http"])
    # a URL starting just before the cut of the head: its "http" may be cut too
    fast &= np.fromiter(("http" not in t[LANGUAGE_HEAD_CHARS - 3:LANGUAGE_HEAD_CHARS + 4] for t in chunk),
                        dtype=bool, count=m) | whole
    s, e = _runs(buf > 32)
    rows = _rows_of_sorted(s, starts)
    k = np.bincount(rows, minlength=m)
    first_run = np.searchsorted(rows, np.arange(m))
    has = k > 0
    chars = np.zeros(m, dtype=np.int64)
    sample_end = starts.copy()
    fast &= has | whole
    if len(s):
        width = e - s  # characters per word: bytes less UTF-8 continuation bytes
        if not asc.all():
            cont = np.flatnonzero((buf[:total] & 0xC0) == 0x80)
            width = width - np.bincount(np.searchsorted(s, cont, side="right") - 1, minlength=len(s))
        cs = np.cumsum(width + 1)
        base = np.where(first_run > 0, cs[np.maximum(first_run - 1, 0)], 0)
        end_pos = cs - np.repeat(base, k) - 1  # index of the space after each word in " ".join(words)
        last_run = np.minimum(np.maximum(first_run + k - 1, 0), len(s) - 1)
        prose = np.where(has, end_pos[last_run], 0)
        cut_ok = end_pos <= LANGUAGE_SAMPLE_CHARS - 1
        cut_ok[:-1] &= rows[1:] == rows[:-1]  # a space follows the word: it is not its row's last
        cut_ok[-1] = False
        jstar = np.bincount(rows[cut_ok], minlength=m)
        long_ = prose > LANGUAGE_SAMPLE_CHARS
        fast &= ~(long_ & (jstar == 0))  # first word alone longer than the sample: cut mid-word, per-row path
        fast &= long_ | whole  # a cut head whose prose ends before the sample does: the rest may add to it
        pick = np.clip(np.where(long_, first_run + jstar - 1, last_run), 0, len(s) - 1)
        chars = np.where(long_, end_pos[pick], prose)
        sample_end = np.where(has, e[pick], starts)
    low = _lower_ascii(buf)
    ls, le = _runs(((low - np.uint8(97)) < 26) | (low == 39))  # [a-z'] (uint8 wraps below 'a')
    lrow = _rows_of_sorted(ls, starts)
    keep = np.flatnonzero(fast[lrow] & (ls < sample_end[lrow]))
    ls, le, lrow = ls[keep], le[keep], lrow[keep]
    words = np.bincount(lrow, minlength=m)
    tab = _lex_table(target)
    slot = tab.lookup(*_word_parts(low, ls, le))
    f = slot >= 0
    r, sl = lrow[f], slot[f]
    fw = np.bincount(r[tab.fw[sl] == 1], minlength=m)
    known = np.bincount(r[tab.known[sl] == 1], minlength=m)
    lead = np.rint(np.bincount(r, weights=tab.lead[sl], minlength=m)).astype(np.int64)
    return fast, chars, words, fw, known, lead


class _Clock:
    """Seconds per rule, summed into `sink` (the benchmark's breakdown)."""

    def __init__(self, sink: dict | None):
        self.sink = sink

    @contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            if self.sink is not None:
                self.sink[name] = self.sink.get(name, 0.0) + time.perf_counter() - t


# Chunks are independent and numpy releases the GIL, but on a shared 2-core machine a second thread measured slower
# (GIL hand-offs between the many short numpy calls); DISTILL_FILTER_THREADS raises it where cores are free.
_THREADS = max(1, int(os.environ.get("DISTILL_FILTER_THREADS", "1") or 1))


def _text_features(texts: list[str], clock: _Clock, target: str | None,
                   needles: list[bytes] | None) -> dict[str, np.ndarray]:
    """Per-row bulk features of the responses, chunk by chunk (bounded memory), chunks on _THREADS threads.
    `needles`: refusal literals (rows holding one are 'refusal_cand'); None marks every row a candidate."""
    from concurrent.futures import ThreadPoolExecutor

    n = len(texts)
    f = {k: np.zeros(n, dtype=np.int64) for k in ("nbytes", "runs", "newlines", "chars", "words", "fw", "known",
                                                   "lead")}
    for k in ("moji", "lang_fast", "refusal_cand"):
        f[k] = np.zeros(n, dtype=bool)
    f["ratio"] = np.zeros(n)

    def job(a: int) -> dict:
        local: dict = {}
        tick = _Clock(local)
        chunk = texts[a:a + _CHUNK_ROWS]
        sl = slice(a, a + len(chunk))
        with tick("bulk:encode"):
            blob, buf, starts, nb, _ = _encode(chunk)
            f["nbytes"][sl] = nb
            low = _lower_ascii(buf)
            ng_bad = _unsafe_rows(buf, starts, int(starts[-1] + nb[-1]))[0]
        with tick("encoding_error"):
            moji = _mojibake_rows(buf, starts, int(starts[-1] + nb[-1]))
            for i in np.flatnonzero(moji):
                moji[i] = MOJIBAKE.search(chunk[i]) is not None
            f["moji"][sl] = moji
            # rows with mojibake never reach the later rules: whatever the byte path makes of them is unused
            ng_bad &= ~moji
        with tick("length"):
            runs = _runs(buf > 32)  # the padding ends the last run
            f["runs"][sl] = np.diff(np.searchsorted(runs[0], starts), append=len(runs[0]))
        with tick("refusal"):
            f["refusal_cand"][sl] = True if needles is None else _rows_containing(blob, starts, nb, needles)
        with tick("excess_whitespace"):
            nl = np.flatnonzero(buf == 10)
            f["newlines"][sl] = np.diff(np.searchsorted(nl, starts), append=len(nl))
        with tick("repetitive"):
            f["ratio"][sl] = _ngram_chunk(chunk, buf, starts, ng_bad, runs=runs, low=low)
        if target is not None:
            with tick("wrong_language:prescreen"):
                out = _language_chunk(chunk, target)
                for key, v in zip(("lang_fast", "chars", "words", "fw", "known", "lead"), out):
                    f[key][sl] = v
        return local

    _bmp_safety()  # build once, before the threads need them
    if target is not None:
        _lex_table(target)
    with clock("bulk (wall)"):
        if _THREADS > 1 and n > _CHUNK_ROWS:
            with ThreadPoolExecutor(_THREADS) as pool:
                spent = list(pool.map(job, range(0, n, _CHUNK_ROWS)))
        else:
            spent = [job(a) for a in range(0, n, _CHUNK_ROWS)]
    if clock.sink is not None:  # thread-seconds per rule inside the bulk pass, as "bulk:<rule>"
        for local in spent:
            for k, v in local.items():
                k = k if k.startswith("bulk:") else "bulk:" + k
                clock.sink[k] = clock.sink.get(k, 0.0) + v
    return f


# ---------------------------------------------------------------- the stage

def quality_verdicts(df: pd.DataFrame, filters: Filters, tokenizer=None, detector=None,
                     timings: dict | None = None) -> pd.DataFrame:
    """keep / reason / evidence / quarantined for every row of a raw_generations frame (same index).

    `timings`, when given, receives seconds per rule: wall time of the per-row steps, "bulk (wall)" for the
    vectorized pass over all rows and "bulk:<rule>" for its thread-seconds per rule."""
    clock = _Clock(timings)
    n = len(df)
    if n == 0:
        return pd.DataFrame({"keep": [], "reason": [], "evidence": [], "quarantined": []}, index=df.index)
    with clock("parse"):
        has_resp = "response" in df.columns
        msgs = df["messages"].tolist() if "messages" in df.columns else [None] * n
        resps = df["response"].tolist() if has_resp else [None] * n
        problem, instruction, texts = _parse_rows(msgs, resps, has_resp)
        quarantined = np.fromiter((p is not None for p in problem), dtype=bool, count=n)
        reason = np.array([""] * n, dtype=object)
        evidence: list[dict] = [{} for _ in range(n)]
        for i in np.flatnonzero(quarantined):
            reason[i] = problem[i]
            evidence[i] = {"rule": "parse", "problem": problem[i]}
    open_ = ~quarantined  # rows no rule has decided yet

    def fail(mask: np.ndarray, code: str, ev: Callable[[int], dict]) -> None:
        nonlocal open_
        hit = mask & open_
        for i in np.flatnonzero(hit):
            reason[i] = code
            evidence[i] = ev(i)
        open_ = open_ & ~hit

    with clock("empty"):
        empty = np.fromiter((not t or t.isspace() for t in texts), dtype=bool, count=n)
        fail(empty, "empty", lambda i: {"rule": "empty", "chars": len(texts[i])})

    target = filters.language.lower() if filters.language else None
    refusal = needles = None
    if filters.refusal_patterns:
        with clock("refusal"):
            pattern = "|".join(f"(?:{p})" for p in filters.refusal_patterns)
            refusal = re.compile(pattern)
            idx = np.flatnonzero(open_)
            lits = refusal_literals(pattern, [texts[i] for i in idx[:: max(1, len(idx) // 2000)][:2000]])
            needles = None if lits is None else [x.encode("utf-8", "surrogatepass") for x in lits]
    feats = _text_features(texts, clock, target, needles)

    with clock("encoding_error"):
        bad_resp = feats["moji"]  # MOJIBAKE matches (the bulk pass ran the regex on its candidates)
        bad_instr = np.zeros(n, dtype=bool)
        for i in np.flatnonzero(mojibake_candidates(instruction) & open_ & ~bad_resp):
            bad_instr[i] = MOJIBAKE.search(instruction[i]) is not None

        def enc_ev(i: int) -> dict:
            field = "response" if bad_resp[i] else "instruction"
            m = MOJIBAKE.search(texts[i] if bad_resp[i] else instruction[i])
            return {"rule": "encoding", "field": field, "match": repr(m.group(0)) if m else None,
                    "offset": m.start() if m else None}

        fail(bad_resp | bad_instr, "encoding_error", enc_ev)

    with clock("length"):
        tok = tokenizer if tokenizer is not None else student_tokenizer()
        nb = feats["nbytes"]
        bounds = token_bounds(tok)
        lo_min, hi_max = filters.min_tokens, filters.max_tokens
        if bounds == "none":
            by_bytes = np.zeros(n, dtype=np.int64)
            lower, upper = np.zeros(n, dtype=np.int64), np.full(n, np.iinfo(np.int64).max)
        else:
            by_bytes = -(-nb // max_token_bytes(tok))
            lower = np.maximum(by_bytes, feats["runs"]) if bounds == "words" else by_bytes
            upper = nb + 1
        sure_short = upper < lo_min
        sure_long = (lower > hi_max) & (lower >= lo_min)  # too_short is checked first (matters if min > max)
        need = open_ & ~((lower >= lo_min) & (upper <= hi_max)) & ~sure_short & ~sure_long
        ntok = length_tokens(pd.Series(texts, dtype=object), need, tok)

        def short_ev(i: int) -> dict:
            if need[i]:
                return {"rule": "length", "tokens": int(ntok[i]), "min_tokens": lo_min}
            return {"rule": "length", "tokens_at_most": int(upper[i]), "bound": "utf8_bytes", "min_tokens": lo_min}

        def long_ev(i: int) -> dict:
            if need[i]:
                return {"rule": "length", "tokens": int(ntok[i]), "max_tokens": hi_max}
            return {"rule": "length", "tokens_at_least": int(lower[i]),
                    "bound": "words" if lower[i] > by_bytes[i] else "utf8_bytes_per_longest_token",
                    "max_tokens": hi_max}

        fail(sure_short | (need & (ntok < lo_min)), "too_short", short_ev)
        fail(sure_long | (need & (ntok > hi_max)), "too_long", long_ev)

    if refusal is not None:
        with clock("refusal"):
            ref = np.zeros(n, dtype=bool)
            for i in np.flatnonzero(feats["refusal_cand"] & open_):
                ref[i] = refusal.search(texts[i]) is not None
            fail(ref, "refusal", lambda i: {"rule": "refusal", "match": refusal.search(texts[i]).group(0)})

    with clock("excess_whitespace"):
        runs = np.zeros(n, dtype=np.int64)
        for i in np.flatnonzero(open_ & (feats["newlines"] >= 3 * (filters.max_blank_run + 1))):
            runs[i] = len(BLANK_RUN.findall(texts[i]))
        fail(runs > filters.max_blank_run, "excess_whitespace",
             lambda i: {"rule": "whitespace", "blank_runs": int(runs[i]), "max_blank_run": filters.max_blank_run})

    with clock("repetitive"):
        ratio = np.zeros(n)
        for i in np.flatnonzero(open_ & (feats["ratio"] > filters.max_repeat_ngram_ratio)):
            ratio[i] = repeat_ngram_ratio(texts[i])
        fail(ratio > filters.max_repeat_ngram_ratio, "repetitive",
             lambda i: {"rule": "repetition", "repeat_4gram_ratio": round(float(ratio[i]), 4),
                        "max_repeat_ngram_ratio": filters.max_repeat_ngram_ratio})

    if target is not None:
        _language_rule(texts, feats, open_, evidence, filters, target, detector, clock, fail)

    with clock("evidence"):
        keep = open_.copy()
        for i in np.flatnonzero(keep):
            evidence[i].setdefault("rules", "passed")
    return pd.DataFrame({"keep": keep, "reason": reason, "evidence": evidence, "quarantined": quarantined},
                        index=df.index)


def _language_rule(texts, feats, open_, evidence, filters, target, detector, clock, fail) -> None:
    n = len(texts)
    with clock("wrong_language:prescreen"):
        idx = np.flatnonzero(open_)
        chars, words, fw, known, lead = (feats[k].copy() for k in ("chars", "words", "fw", "known", "lead"))
        script_ok = np.ones(n, dtype=bool)
        samples: dict[int, str] = {}
        for i in idx[~feats["lang_fast"][idx]]:  # non-ASCII, code or URLs: the per-row definition
            s = samples[i] = language_sample(texts[i])
            chars[i] = len(s)
            words[i], fw[i], known[i], lead[i], script_ok[i] = prescreen_counts(s, target)
        checkable = open_ & (chars >= filters.language_min_chars)
        for i in np.flatnonzero(open_ & ~checkable):
            evidence[i] = {"language": "unverifiable", "prose_chars": int(chars[i])}
        method, share = prescreen_decision(words, fw, known, lead, script_ok, target)
        settled = checkable & (method != "")
        by_fw = np.flatnonzero(settled & (method == "function_word_prescreen"))
        for i, sh in zip(by_fw.tolist(), np.round(share[by_fw], 3).tolist()):
            evidence[i] = {"language": target, "method": "function_word_prescreen", "function_word_share": sh,
                           "target": target}
        by_lex = np.flatnonzero(settled & (method == "lexicon_prescreen"))
        w = np.maximum(words[by_lex], 1)
        for i, nw, cov, ml in zip(by_lex.tolist(), words[by_lex].tolist(), np.round(known[by_lex] / w, 3).tolist(),
                                  np.round(lead[by_lex] / w / 100, 3).tolist()):
            evidence[i] = {"language": target, "method": "lexicon_prescreen", "words": nw, "lexicon_share": cov,
                           "mean_lead_zipf": ml, "target": target}
    with clock("wrong_language:detector"):
        rest = np.flatnonzero(checkable & ~settled)
        for i in rest:
            if i not in samples:
                samples[i] = language_sample(texts[i])
        uniq = list(dict.fromkeys(samples[i] for i in rest))
        found = dict(zip(uniq, detect_languages(uniq, target, detector))) if uniq else {}
        wrong = np.zeros(n, dtype=bool)
        for i in rest:
            lang, conf, tconf = found[samples[i]]
            ev = {"language": lang, "confidence": round(conf, 4), "target": target,
                  "target_confidence": round(tconf, 4)}
            if lang is None:
                ev["language"] = "unverifiable"
            elif lang != target:
                wrong[i] = True
                ev["rule"] = "language"
            evidence[i] = ev
        fail(wrong, "wrong_language", lambda i: evidence[i])


def quality_filter(df: pd.DataFrame, category: Category, tokenizer=None, detector=None) -> pd.DataFrame:
    """The annotated stage frame: every input row with its verdict."""
    v = quality_verdicts(df, category.filters, tokenizer, detector)
    return annotate(df, v["keep"], v["reason"], v["evidence"], v["quarantined"])


@dg.asset(
    name="quality_filtered",
    ins={"raw_generations": dg.AssetIn("raw_generations")},
    partitions_def=CATEGORY,
    group_name="filtering",
    kinds={"duckdb", "pandas"},
    code_version="quality-v2",
    metadata={"partition_expr": "category"},
)
def quality_filtered(context: dg.AssetExecutionContext, store: DuckDBStore, raw_generations: pd.DataFrame):
    """Every raw generation of the category, annotated by the basic-quality rules (the guide's filter 1):
    token-length bounds (student tokenizer), encoding errors, empty/refusal, excess whitespace, repetition and
    wrong language. Malformed raw rows are quarantined. Columns: raw_generations' + keep/verdict/reason/evidence."""
    category = load_tasks().category(context.partition_key)
    out = quality_filter(kept(raw_generations), category)
    return publish_stage(context, store, out, stage="quality_filtered")


assets = [quality_filtered]
