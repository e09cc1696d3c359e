"""Numpy byte kernels of the quality filter: per-row features computed over one UTF-8 buffer per chunk of rows.

Each kernel is a bound or a superset of its per-row rule, so the verdicts stay those of the per-row definitions
(tests/lib/filters/test_quality_speed_equivalence.py):
- mojibake / control bytes pick the candidate rows of the MOJIBAKE regex;
- word 4-grams are hashed: hash merges can only lower the distinct count, so a row whose hashed repeat ratio is
  within the limit is within it exactly (the others are recounted with Python sets);
- the language sample and its ASCII words (function words, lexicon lookups) come from the bytes of each row's head.
Rows with characters a byte path cannot reproduce (casefolding, Unicode whitespace, other scripts, code in the
language sample) are marked so the caller takes the per-row definition.
"""

from functools import lru_cache

import numpy as np

from distill_assets.lib.filters.language import (
    _NON_LATIN_LETTER,
    _WORD,
    FUNCTION_WORDS,
    LANGUAGE_SAMPLE_CHARS,
    LEXICON_MAX_WORD,
    target_lexicon,
)

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
