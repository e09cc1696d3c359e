"""The student's tokenizer and token counts: the one place other stages get student-token lengths from.

Token counts use the student tokenizer (SmolLM2, read from the packaged GGUF). For its byte-level BPE
`max(ceil(bytes / longest token), words) <= tokens <= bytes + 1` (words = runs of non-whitespace: ByteLevel
pre-tokenization never joins two of them); `token_bounds` says which of these bounds hold for a tokenizer.
"""

import json
import os
import re
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from distill_assets.lib.settings import cache_root, embedded_teacher_gguf

# GGUF metadata keys of the special tokens, and the tokenizer attribute each sets
GGUF_SPECIAL_TOKENS = {"bos_token": "tokenizer.ggml.bos_token_id", "eos_token": "tokenizer.ggml.eos_token_id",
                       "unk_token": "tokenizer.ggml.unknown_token_id", "pad_token": "tokenizer.ggml.padding_token_id"}


def _gguf_fields(gguf_path: str | Path) -> dict:
    from gguf import GGUFReader  # deferred: heavy optional dependency

    fields = GGUFReader(str(gguf_path)).fields
    out = {}
    for key in [*GGUF_SPECIAL_TOKENS.values(), "tokenizer.ggml.model"]:
        f = fields.get(key)
        if f is not None and f.data:
            v = f.parts[f.data[0]]
            out[key] = bytes(v).decode() if key == "tokenizer.ggml.model" else int(v[0])
    return out


def gguf_special_token_ids(gguf_path: str | Path) -> dict[str, int]:
    """{bos_token|eos_token|unk_token|pad_token: id} as the GGUF file's metadata names them."""
    fields = _gguf_fields(gguf_path)
    return {attr: fields[key] for attr, key in GGUF_SPECIAL_TOKENS.items() if key in fields}


def _byte_level_bpe(spec: dict) -> dict:
    """A byte-level BPE backend (GGUF tokenizer model "gpt2") as tokenizers builds one: no normalizer, ByteLevel
    pre-tokenizer and decoder, no byte fallback or unk token (every byte has a token)."""
    spec = dict(spec)
    spec["normalizer"] = None
    spec["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    spec["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    spec["model"] = {**spec["model"], "byte_fallback": False, "fuse_unk": False, "unk_token": None,
                     "continuing_subword_prefix": "", "end_of_word_suffix": ""}
    return spec


def gguf_tokenizer(gguf_path: str | Path, out_dir: str | Path):
    """Convert a GGUF file's tokenizer into an HF tokenizer folder `out_dir` and load it from there.

    transformers 5.17 (llm-compressor's pin) converts a Llama GGUF with the SentencePiece-style converter even
    when its tokenizer is byte-level BPE ("gpt2"): eos set to the bos token, no pad token, and a decoder that
    turns "\u2581" into a space (`GGUFLlamaConverter` in transformers/integrations/ggml.py); later versions
    convert it right. The file's metadata decides either way: its special tokens, and for "gpt2" a plain
    byte-level BPE backend with the converted vocabulary and merges."""
    from transformers import AutoTokenizer  # deferred: heavy optional dependency

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    for attr, token_id in gguf_special_token_ids(gguf_path).items():
        token = tok.convert_ids_to_tokens(token_id)
        if token is not None and getattr(tok, attr) != token:
            setattr(tok, attr, token)
    tok.save_pretrained(str(out_dir))
    if _gguf_fields(gguf_path).get("tokenizer.ggml.model") == "gpt2":
        path = out_dir / "tokenizer.json"
        spec = json.loads(path.read_text())
        fixed = _byte_level_bpe(spec)
        if fixed != spec:
            path.write_text(json.dumps(fixed, ensure_ascii=False))
    return AutoTokenizer.from_pretrained(str(out_dir))


def _tokenizer_cache_dir(gguf: Path) -> Path:
    st = gguf.stat()
    # "-s3": conversions with the GGUF's own special tokens (see gguf_tokenizer); bumped on any change to the
    # conversion, so that no older cache is reused
    return cache_root() / "tokenizers" / f"{gguf.stem}-{st.st_size}-s3"


@lru_cache(maxsize=2)
def student_tokenizer(gguf_path: str | None = None):
    """The student's tokenizer (with its chat template) from the packaged SmolLM2 GGUF.

    Converting the GGUF vocabulary takes ~10 s, so the converted tokenizer is saved once under
    $DISTILL_CACHE (default ~/.cache/distill) and reloaded from there (< 1 s)."""
    from transformers import AutoTokenizer  # deferred: heavy optional dependency

    gguf = Path(gguf_path) if gguf_path else embedded_teacher_gguf()
    cache = _tokenizer_cache_dir(gguf)
    if (cache / "tokenizer.json").exists():
        try:
            return AutoTokenizer.from_pretrained(str(cache))
        except Exception:  # a corrupt cache is rebuilt below
            pass
    tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        gguf_tokenizer(gguf, tmp)
        if cache.exists():
            shutil.rmtree(cache, ignore_errors=True)
        os.replace(tmp, cache)
    except OSError:  # an unwritable cache only costs the conversion next time
        with tempfile.TemporaryDirectory() as d:
            return gguf_tokenizer(gguf, d)
    return AutoTokenizer.from_pretrained(str(cache))


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
