"""Teacher logprobs: the teacher's token texts as student token ids, and the logprobs behind clean_dataset rows.

Servers name each generated token and its top alternatives by text. OpenAI and vLLM add the token's UTF-8
`bytes`, which identify a byte-level BPE token exactly; llama-cpp-python sends only the text, decoded token by
token with errors ignored. `TokenIdMap` therefore indexes the student vocabulary twice: by each token's bytes,
and by its text where those bytes are whole UTF-8 (a token holding part of a multi-byte character has no text of
its own, and a text two tokens share names neither). A token it cannot name gets id -1, and its probability
counts in the tail. llama.cpp's text of such a partial token is its readable part: " " for the bytes " \xf0\x9f"
that open an emoji, which names the space token; `LossyText` lets training accept the student's partial token
where the teacher's text is that readable part (and attributes such an alternative to the readable token).

The ids are only meaningful when the teacher tokenizes like the student (the same tokenizer family, e.g. the
embedded SmolLM2 teacher and the SmolLM2 student). Each row records `vocab_hash` of the tokenizer that mapped
it; training checks that against the student's and checks, row by row, that the student's tokens of the
response are the teacher's sampled tokens (lib/training/sparse_kd.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from distill_assets.lib.errors import InputError
from distill_assets.lib.settings import student_base_spec
from distill_assets.lib.tokenizer import student_tokenizer
from resources.llm_logprobs import decode_arrays
from resources.llm_types import TokenLogprobs
from resources.store import DuckDBStore, table_exists


def vocab_hash(tokenizer) -> str:
    """Identity of a tokenizer's vocabulary (token -> id, added tokens included)."""
    items = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return "vocab-" + hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()[:16]


def _byte_decoder() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, inverted: a byte-level BPE token's characters -> its bytes."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = list(bs), 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _decoder_kinds(tokenizer) -> set[str]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return set()
    dec = json.loads(backend.to_str()).get("decoder") or {}
    return {d.get("type") for d in dec.get("decoders", [dec])}


def token_bytes(tokenizer) -> list[bytes]:
    """Each id's bytes: byte-level BPE exactly, SentencePiece (▁, <0xNN> byte fallback) as it decodes."""
    kinds = _decoder_kinds(tokenizer)
    byte_level = "ByteLevel" in kinds
    dec = _byte_decoder()
    added = {i: t.content for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    out = []
    for i, tok in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        tok = tok or ""
        if i in added:
            out.append(added[i].encode())
        elif byte_level and all(c in dec for c in tok):
            out.append(bytes(dec[c] for c in tok))
        elif len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
            out.append(bytes([int(tok[3:5], 16)]))
        else:
            out.append(tok.replace("▁", " ").encode())
    return out


class TokenIdMap:
    """Token text or bytes -> student id (resources.llm_logprobs.TokenMap); `name` is the vocab hash."""

    def __init__(self, tokenizer):
        self.name = vocab_hash(tokenizer)
        self.by_bytes: dict[bytes, int] = {}
        by_text: dict[str, int] = {}
        ambiguous: set[str] = set()
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        for i, raw in enumerate(token_bytes(tokenizer)):
            self.by_bytes.setdefault(raw, i)
            if i in special:
                continue  # servers render control tokens as "" or not at all; text never names them
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                continue  # part of a character: the server's text for it is lossy
            if text in by_text:
                ambiguous.add(text)
            by_text[text] = i
        for t in ambiguous | {""}:
            by_text.pop(t, None)
        self.by_text = by_text

    def id_of(self, text: str, raw: bytes | None) -> int:
        if raw is not None:
            return self.by_bytes.get(raw, -1)
        return self.by_text.get(text, -1)

    def encode(self, logprobs: TokenLogprobs, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        n = len(logprobs)
        ids = np.full((n, k + 1), -1, dtype=np.int32)
        lps = np.full((n, k + 1), -np.inf, dtype=np.float32)
        for i in range(n):
            ids[i, 0] = self.id_of(logprobs.tokens[i], logprobs.token_bytes[i])
            lps[i, 0] = logprobs.logprobs[i]
            # llama.cpp lists the sampled token among its alternatives even outside the top k: keep the best k
            for j, (text, raw, lp) in enumerate(logprobs.top[i][:k]):
                ids[i, j + 1] = self.id_of(text, raw)
                lps[i, j + 1] = lp
        return ids, lps.astype(np.float16), int((ids[:, 0] < 0).sum())


def logprob_tokenizer():
    """The student's tokenizer (STUDENT_BASE's, else the packaged SmolLM2's): the ids logprobs are stored in."""
    from transformers import AutoTokenizer  # deferred: heavy optional dependency

    spec = student_base_spec()
    if spec and not spec.endswith(".gguf"):
        return AutoTokenizer.from_pretrained(str(Path(spec).expanduser()) if Path(spec).expanduser().exists()
                                             else spec)
    return student_tokenizer(spec)


@lru_cache(maxsize=2)
def _map_of(key: str) -> TokenIdMap:
    return TokenIdMap(logprob_tokenizer())


def student_token_map() -> TokenIdMap:
    """The token map for the current STUDENT_BASE, built once per process."""
    return _map_of(student_base_spec() or "")


@dataclass
class LossyText:
    """Per student id: whether its bytes are only part of a character, and a code of its text as llama.cpp
    renders it (decoded alone, errors ignored); `code_of_unnamed` is the code of "" (what -1 stands for)."""

    partial: np.ndarray  # bool [vocab]
    code: np.ndarray  # int64 [vocab]
    code_of_unnamed: int

    @classmethod
    def of(cls, tokenizer) -> LossyText:
        raw = token_bytes(tokenizer)
        partial = np.zeros(len(raw), dtype=bool)
        texts = []
        for i, b in enumerate(raw):
            try:
                texts.append(b.decode("utf-8"))
            except UnicodeDecodeError:
                partial[i] = True
                texts.append(b.decode("utf-8", errors="ignore"))
        codes, _ = pd.factorize(pd.Series(texts + [""]))
        return cls(partial, codes[:-1].astype(np.int64), int(codes[-1]))

    def same_as_sent(self, sent: np.ndarray, got: np.ndarray) -> np.ndarray:
        """Where the student's token `got` is the teacher's token `sent` (an id or -1) as the server named it."""
        sent_code = np.where(sent >= 0, self.code[np.clip(sent, 0, None)], self.code_of_unnamed)
        return (sent == got) | (self.partial[got] & (self.code[got] == sent_code))


@dataclass
class TeacherTokens:
    """One example's stored teacher logprobs (see resources/llm_logprobs.py for the layout)."""

    ids: np.ndarray  # int32 [n, k+1]
    logprobs: np.ndarray  # float16 [n, k+1]
    tokenizer: str
    model: str

    @property
    def k(self) -> int:
        return self.ids.shape[1] - 1


def example_logprobs(store: DuckDBStore, clean: pd.DataFrame) -> dict[str, TeacherTokens]:
    """clean_dataset rows -> their teacher logprobs, by example_id, through lineage: generation_id names the
    raw_generations row, whose call_key names the `teacher_logprobs` row. Rows without logprobs are absent."""
    for col in ("example_id", "generation_id"):
        if col not in clean.columns:
            raise InputError("clean_dataset", None, col, "missing: needed to find the teacher logprobs of each row")
    keys = clean[["example_id", "generation_id"]].astype(str)
    with store.connect() as conn:
        if not table_exists(conn, "raw_generations"):
            raise ValueError("sparse_kd needs raw_generations (call keys of the teacher answers); materialize it")
        conn.register("_ex", keys)
        try:
            rows = conn.execute("""
                SELECT e.example_id, l.model, l.k, l.n_tokens, l.token_ids, l.logprobs, l.tokenizer
                FROM _ex e JOIN raw_generations r ON r.generation_id = e.generation_id
                JOIN teacher_logprobs l ON l.call_key = r.call_key
                QUALIFY row_number() OVER (PARTITION BY e.example_id ORDER BY l.created_at DESC) = 1""").fetchall()
        finally:
            conn.unregister("_ex")
    out = {}
    for eid, model, k, n, ids, lps, tok in rows:
        a, b = decode_arrays(ids, lps, n, k)
        out[str(eid)] = TeacherTokens(a, b, str(tok), str(model))
    return out
