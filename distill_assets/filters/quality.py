"""`quality_filtered`: the guide's filter 1 (basic quality), cheap vectorized rules run before anything costly.

Rules, in order; a dropped row records the FIRST rule it fails:
  empty, encoding_error, too_short, too_long, refusal, excess_whitespace, repetitive, wrong_language.
A row whose raw record is malformed (messages not JSON, wrong roles/order, non-string content, missing
response) is `quarantined` with the parse problem as reason: it is neither trained on nor silently lost.

Token lengths are counted with the student tokenizer (SmolLM2, read from the packaged GGUF). Tokenizing every
response is the dominant cost, so the length rule first uses exact byte bounds of a byte-level BPE
(1 <= bytes per token <= longest token) and only tokenizes rows the bounds cannot decide, plus every row it
drops (so the evidence always carries the exact count); `words <= tokens` holds because ByteLevel
pre-tokenization splits on whitespace (tests/filters/test_quality.py checks it on random text).
"""


import json
import math
import os
import re
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

def _tokenizer_cache_dir(gguf: Path) -> Path:
    root = Path(os.environ.get("DISTILL_CACHE") or (Path.home() / ".cache" / "distill"))
    st = gguf.stat()
    return root / "tokenizers" / f"{gguf.stem}-{st.st_size}"


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


# ---------------------------------------------------------------- rules

# U+FFFD, classic UTF-8-read-as-cp1252/latin-1 mojibake, and C0 controls other than \n, \t
# (a \r is allowed only as part of \r\n line endings).
MOJIBAKE = re.compile(
    "\ufffd"
    "|[\u00c3\u00c2][\u0080-\u00bf]"
    "|\u00e2\u20ac[\u0080-\u00bf\u2018-\u203a\u2122\u0153\u0161\u017e\u0178\u02dc\u02c6\u201d\u201c]?"
    "|\u00c3[\u0192\u2020\u2021\u0161\u00a9\u00a8]"
    "|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)"
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


def function_word_share(text: str, words: frozenset) -> float:
    tokens = _WORD.findall(text.lower())
    if len(tokens) < 8:
        return 0.0
    return sum(t in words for t in tokens) / len(tokens)


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


def quality_verdicts(df: pd.DataFrame, filters: Filters, tokenizer=None, detector=None) -> pd.DataFrame:
    """keep / reason / evidence / quarantined for every row of a raw_generations frame (same index)."""
    n = len(df)
    if n == 0:
        return pd.DataFrame({"keep": [], "reason": [], "evidence": [], "quarantined": []}, index=df.index)
    has_resp = "response" in df.columns
    msgs = df["messages"] if "messages" in df.columns else pd.Series([None] * n, index=df.index)
    resps = df["response"] if has_resp else pd.Series([None] * n, index=df.index)
    parsed = [parse_record(m, r, has_resp) for m, r in zip(msgs.tolist(), resps.tolist())]
    problem = [p[0] for p in parsed]
    quarantined = np.array([p is not None for p in problem], dtype=bool)
    response = pd.Series([p[3] for p in parsed], index=df.index, dtype=object)
    instruction = pd.Series([p[2] for p in parsed], index=df.index, dtype=object)

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

    stripped_len = response.str.strip().str.len().fillna(0).to_numpy()
    fail(stripped_len == 0, "empty", lambda i: {"rule": "empty", "chars": int(len(response.iat[i]))})

    bad_resp = response.str.contains(MOJIBAKE, regex=True).fillna(False).to_numpy(dtype=bool)
    bad_instr = instruction.str.contains(MOJIBAKE, regex=True).fillna(False).to_numpy(dtype=bool)

    def enc_ev(i: int) -> dict:
        field = "response" if bad_resp[i] else "instruction"
        m = MOJIBAKE.search(response.iat[i] if bad_resp[i] else instruction.iat[i])
        return {"rule": "encoding", "field": field, "match": repr(m.group(0)) if m else None,
                "offset": m.start() if m else None}

    fail(bad_resp | bad_instr, "encoding_error", enc_ev)

    # length: exact-bound shortcut, then the tokenizer for the undecided rows
    nbytes = response.map(lambda s: len(s.encode("utf-8"))).to_numpy(dtype=np.int64)
    tok = tokenizer if tokenizer is not None else None
    longest = max_token_bytes(tok) if tok is not None else max_token_bytes()
    # ByteLevel pre-tokenization never joins two whitespace-separated words into one token, and every token
    # covers at least one byte: words <= tokens <= bytes (+1 for a possible prefix space)
    words = response.str.count(r"\S+").fillna(0).to_numpy(dtype=np.int64)
    lower, upper = np.maximum(-(-nbytes // longest), words), nbytes + 1
    need = open_ & ~((lower >= filters.min_tokens) & (upper <= filters.max_tokens))
    ntok = length_tokens(response, need, tok)
    short = need & (ntok < filters.min_tokens)
    long_ = need & (ntok > filters.max_tokens)
    fail(short, "too_short", lambda i: {"rule": "length", "tokens": int(ntok[i]), "min_tokens": filters.min_tokens})
    fail(long_, "too_long", lambda i: {"rule": "length", "tokens": int(ntok[i]), "max_tokens": filters.max_tokens})

    if filters.refusal_patterns:
        refusal = re.compile("|".join(f"(?:{p})" for p in filters.refusal_patterns))
        ref = response.str.contains(refusal, regex=True).fillna(False).to_numpy(dtype=bool)
        fail(ref, "refusal", lambda i: {"rule": "refusal", "match": refusal.search(response.iat[i]).group(0)})

    runs = response.str.count(BLANK_RUN.pattern).fillna(0).to_numpy(dtype=np.int64)
    fail(runs > filters.max_blank_run, "excess_whitespace",
         lambda i: {"rule": "whitespace", "blank_runs": int(runs[i]), "max_blank_run": filters.max_blank_run})

    ratio = np.zeros(n)
    idx = np.flatnonzero(open_)
    ratio[idx] = [repeat_ngram_ratio(response.iat[i]) for i in idx]
    fail(ratio > filters.max_repeat_ngram_ratio, "repetitive",
         lambda i: {"rule": "repetition", "repeat_4gram_ratio": round(float(ratio[i]), 4),
                    "max_repeat_ngram_ratio": filters.max_repeat_ngram_ratio})

    if filters.language:
        target = filters.language.lower()
        idx = np.flatnonzero(open_)
        samples = [language_sample(response.iat[i]) for i in idx]
        checkable = [j for j, s in enumerate(samples) if len(s) >= filters.language_min_chars]
        for j, s in enumerate(samples):
            if len(s) < filters.language_min_chars:
                evidence[idx[j]] = {"language": "unverifiable", "prose_chars": len(s)}
        # most replies are plainly in the target language: a function-word share settles those without lingua
        # (lingua is ~0.3 ms a text; this is ~10 us), and only the doubtful rest go to the detector
        pre = {}
        if target in FUNCTION_WORDS:
            for j in checkable:
                share = function_word_share(samples[j], FUNCTION_WORDS[target])
                if share >= PRESCREEN_SHARE:
                    pre[j] = share
        for j, share in pre.items():
            evidence[idx[j]] = {"language": target, "method": "function_word_prescreen",
                                "function_word_share": round(share, 3), "target": target}
        checkable = [j for j in checkable if j not in pre]
        uniq = list(dict.fromkeys(samples[j] for j in checkable))
        found = dict(zip(uniq, detect_languages(uniq, target, detector))) if uniq else {}
        wrong = np.zeros(n, dtype=bool)
        for j in checkable:
            lang, conf, tconf = found[samples[j]]
            ev = {"language": lang, "confidence": round(conf, 4), "target": target,
                  "target_confidence": round(tconf, 4)}
            if lang is None:
                ev["language"] = "unverifiable"
            elif lang != target:
                wrong[idx[j]] = True
                ev["rule"] = "language"
            evidence[idx[j]] = ev
        fail(wrong, "wrong_language", lambda i: evidence[i])

    keep = open_.copy()
    for i in np.flatnonzero(keep):
        evidence[i].setdefault("rules", "passed")
    return pd.DataFrame({"keep": keep, "reason": reason, "evidence": evidence, "quarantined": quarantined},
                        index=df.index)


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
    code_version="quality-v1",
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
