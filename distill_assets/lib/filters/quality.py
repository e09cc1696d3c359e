"""The basic-quality rules of `quality_filtered` (filter 1 of 5), cheap vectorized rules run before anything costly.

Rules, in order; a dropped row records the FIRST rule it fails:
  empty, encoding_error, too_short, too_long, refusal, excess_whitespace, repetitive, wrong_language.
A row whose raw record is malformed (messages not JSON, wrong roles/order, non-string content, missing
response) is `quarantined` with the parse problem as reason: it is neither trained on nor silently lost.

Speed (benchmarks/basic_filters.py: 200k rows in ~5 s on 2 shared cores): one bulk pass encodes each chunk of rows
into a UTF-8 buffer and computes per-row features with numpy over the bytes; the exact per-row rule (a regex, the
n-gram set, the tokenizer, the language detector) then runs only on the rows the features cannot decide. Each
shortcut is a bound or a superset (byte_kernels.py), so the verdicts are those of the per-row rules
(tests/lib/filters/test_quality_speed_equivalence.py checks them against the plain per-row definitions):

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

import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pandas as pd

from distill_assets.lib.filters.byte_kernels import (
    _CHUNK_ROWS,
    _bmp_safety,
    _encode,
    _language_chunk,
    _lex_table,
    _lower_ascii,
    _mojibake_rows,
    _ngram_chunk,
    _rows_containing,
    _runs,
    _unsafe_rows,
    mojibake_candidates,
)
from distill_assets.lib.filters.language import detect_languages, language_sample, prescreen_counts, prescreen_decision
from distill_assets.lib.filters.parse import _parse_rows
from distill_assets.lib.filters.regex_literals import refusal_literals
from distill_assets.lib.filters.turns import every_turn
from distill_assets.lib.settings import filter_threads
from distill_assets.lib.stages import annotate
from distill_assets.lib.tasks import Category, Filters
from distill_assets.lib.tokenizer import length_tokens, max_token_bytes, student_tokenizer, token_bounds

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


def repeat_ngram_ratio(text: str, n: int = 4) -> float:
    """Share of word n-grams that repeat an earlier one (0 = all distinct)."""
    w = text.casefold().split()
    if len(w) < n + 1:
        return 0.0
    grams = list(zip(*(w[i:] for i in range(n))))
    return 1.0 - len(set(grams)) / len(grams)



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


def _text_features(texts: list[str], clock: _Clock, target: str | None,
                   needles: list[bytes] | None) -> dict[str, np.ndarray]:
    """Per-row bulk features of the responses, chunk by chunk (bounded memory), chunks on filter_threads() threads.
    `needles`: refusal literals (rows holding one are 'refusal_cand'); None marks every row a candidate."""
    # Chunks are independent and numpy releases the GIL, but on a shared 2-core machine a second thread measured
    # slower (GIL hand-offs between the many short numpy calls); DISTILL_FILTER_THREADS raises it where cores are free.
    threads = filter_threads()
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
        if threads > 1 and n > _CHUNK_ROWS:
            with ThreadPoolExecutor(threads) as pool:
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
    """The annotated stage frame: every input row with its verdict; a conversation's every assistant turn is
    checked, and the first failing turn decides (lib/filters/turns.py)."""
    v = every_turn(df, lambda frame: quality_verdicts(frame, category.filters, tokenizer, detector))
    return annotate(df, v["keep"], v["reason"], v["evidence"], v["quarantined"])
