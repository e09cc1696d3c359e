"""The student tokenizer from the packaged GGUF: special tokens as the file names them, on every transformers
version the project runs on (5.17, llm-compressor's pin, converts eos wrong), and the cached copy is what the
first call returns too."""

from distill_assets.lib.settings import embedded_teacher_gguf
from distill_assets.lib.tokenizer import gguf_special_token_ids, gguf_tokenizer, student_tokenizer, token_bounds


def test_gguf_tokenizer_keeps_the_files_special_tokens_and_byte_level_bpe(tmp_path):
    import json

    g = embedded_teacher_gguf()
    ids = gguf_special_token_ids(g)
    assert ids == {"bos_token": 1, "eos_token": 2, "unk_token": 0, "pad_token": 2}  # SmolLM2's GGUF metadata
    tok = gguf_tokenizer(g, tmp_path)
    spec = json.loads((tmp_path / "tokenizer.json").read_text())
    assert spec["normalizer"] is None and spec["decoder"]["type"] == "ByteLevel"
    assert not spec["model"]["byte_fallback"] and token_bounds(tok) == "words"
    text = "a \u2581 b naïve 🇫🇷"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text  # byte-level round trip
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert (tok.eos_token_id, tok.pad_token_id) == (2, 2)


def test_first_and_cached_student_tokenizer_agree(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path))
    student_tokenizer.cache_clear()
    try:
        first = student_tokenizer()  # converts and caches
        student_tokenizer.cache_clear()
        again = student_tokenizer()  # loads the cache
    finally:
        student_tokenizer.cache_clear()
    assert first.name_or_path == again.name_or_path and str(tmp_path) in again.name_or_path
    assert first.get_vocab() == again.get_vocab() and first.eos_token == again.eos_token == "<|im_end|>"
