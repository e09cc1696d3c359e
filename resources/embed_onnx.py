"""Sentence embeddings through ONNX Runtime: the embedder's `onnx` (fp32) and `onnx-int8` backends.

The sentence-transformers model (a BERT-family encoder with mean pooling and L2 normalization) is exported once,
with the pooling and normalization inside the graph, and cached under `cache_dir`, keyed by the model's files,
the recipe and the onnxruntime version (written with an atomic rename).

- `onnx` runs the exported fp32 graph: torch's vectors up to float rounding, ~1.25x faster on 2 AVX2 cores,
  1.8-2.5x on 2 AVX-512 cores (ONNX Runtime's kernels use AVX-512; torch's CPU build gains little).
- `onnx-int8` fuses the attention, LayerNorm and GELU subgraphs (ONNX Runtime's transformer optimizer) and
  quantizes the weights to int8 per output channel; activations are quantized per batch at run time. ~1.7-1.9x
  faster than torch. Per-channel scales keep the vectors far closer to fp32 than one scale per matrix (worst
  cosine ~0.96 against ~0.83 on the benchmark's answers) at the same speed. The error is not neutral for
  near-dup: the noise lowers the cosine of close pairs (by ~0.014 on average, up to ~0.09, on templated answers),
  so fewer rows are dropped. `benchmarks/embedding.py` prints the speed and how far the near-dup kept set agrees.
"""

from __future__ import annotations

import copy
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

RECIPE = "int8-dynamic-fused-per-channel-v1"
_FUSABLE = {"bert"}  # model types whose subgraphs ORT's bert optimizer knows


def model_fingerprint(model_dir: str | Path) -> str:
    """A content hash of the model folder (every file, by relative path)."""
    root = Path(model_dir)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _check_pipeline(st_model, model_dir: str, backend: str) -> tuple[object, int]:
    """(the Hugging Face encoder, max_seq_length); ValueError unless the model is encoder -> mean -> normalize."""
    mods = list(st_model)
    kinds = [type(m).__name__ for m in mods]
    pool = mods[1] if len(mods) > 1 else None
    mode = getattr(pool, "pooling_mode", None)  # sentence-transformers >= 6; older ones had one bool per mode
    mean = mode == "mean" if mode is not None else (
        getattr(pool, "pooling_mode_mean_tokens", False)
        and not any(getattr(pool, f, False) for f in ("pooling_mode_cls_token", "pooling_mode_max_tokens",
                                                      "pooling_mode_mean_sqrt_len_tokens")))
    if not (len(mods) == 3 and kinds[0] == "Transformer" and kinds[2] == "Normalize" and mean):
        raise ValueError(f"embedder backend {backend}: {model_dir} is {' -> '.join(kinds)} (pooling "
                         f"{mode!r}); the backend supports Transformer -> mean Pooling -> Normalize models "
                         "(use backend torch)")
    return mods[0].auto_model, int(st_model.max_seq_length or 512)


BACKENDS = ("onnx", "onnx-int8")


def build(st_model, model_dir: str | Path, cache_dir: str | Path, backend: str = "onnx-int8") -> Path:
    """The cached ONNX file of `st_model` for `backend` (built on first use): `onnx` is the fp32 graph as
    exported, `onnx-int8` the fused graph with int8 weights."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown ONNX embedder backend {backend!r}; one of {BACKENDS}")
    try:
        import onnx
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        raise ImportError(f"embedder backend {backend} needs onnxruntime and onnx ({e}): "
                          "pip install -e '.[scaleout]', or use EMBEDDER_BACKEND=torch") from None
    import torch

    encoder, _ = _check_pipeline(st_model, str(model_dir), backend)
    recipe = RECIPE if backend == "onnx-int8" else "fp32-v1"
    key = hashlib.sha256(f"{model_fingerprint(model_dir)}|{recipe}|{ort.__version__}".encode()).hexdigest()[:20]
    out = Path(cache_dir) / "onnx-embed" / f"{key}.onnx"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # a copy in eager attention: the optimizer recognizes that subgraph (not SDPA's) and fuses it
    encoder = copy.deepcopy(encoder)
    if hasattr(encoder, "set_attn_implementation"):
        encoder.set_attn_implementation("eager")
    cfg = encoder.config
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        names = ["input_ids", "attention_mask"] + (["token_type_ids"] if cfg.type_vocab_size else [])
        example = tuple(torch.ones((2, 8), dtype=torch.int64) for _ in names)
        with torch.inference_mode():
            torch.onnx.export(_mean_pooled(encoder), example, str(fp32), dynamo=False, input_names=names,
                              output_names=["embedding"], opset_version=17,
                              dynamic_axes={**{n: {0: "batch", 1: "tokens"} for n in names},
                                            "embedding": {0: "batch"}})
        final = fp32  # fp32: ORT's own graph optimizations at load time were faster here than the bert fusions
        if backend == "onnx-int8":
            src = fp32
            if cfg.model_type in _FUSABLE:
                from onnxruntime.transformers.optimizer import optimize_model

                src = Path(tmp) / "fused.onnx"
                optimize_model(str(fp32), model_type="bert", num_heads=cfg.num_attention_heads,
                               hidden_size=cfg.hidden_size, opt_level=1).save_model_to_file(str(src))
            final = Path(tmp) / "int8.onnx"
            # fused ops carry no inferred output types: FLOAT is what they produce
            quantize_dynamic(str(src), str(final), weight_type=QuantType.QInt8, per_channel=True,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        os.replace(final, out)  # same folder: readers see the whole file or none
    return out


def _mean_pooled(encoder):
    """The encoder with mean pooling over the attention mask and L2 normalization (what sentence-transformers
    computes for these models), as one torch module to export."""
    import torch

    class MeanPooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = encoder

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kw = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            hidden = self.enc(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    return MeanPooled().eval()


class OnnxEncoder:
    """Runs the int8 file: texts sorted by token length and batched (little padding), vectors in input order."""

    def __init__(self, path: str | Path, tokenizer, max_length: int, threads: int):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.tokenizer, self.max_length = tokenizer, max_length
        self.dimension = int(self.session.get_outputs()[0].shape[-1])

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        ids = enc["input_ids"]
        order = np.argsort([-len(x) for x in ids], kind="stable")
        out = np.empty((len(ids), self.dimension), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = self.tokenizer.pad({k: [enc[k][i] for i in idx] for k in self.inputs}, return_tensors="np")
            out[idx] = self.session.run(None, {k: batch[k].astype(np.int64) for k in self.inputs})[0]
        return out
