"""Export stage: `merged_model` -> `gguf_export` (f16, Q8_0, Q4_K_M + Modelfile), `awq_export` (CUDA only)."""

from distill_assets.export.awq import awq_export
from distill_assets.export.gguf import gguf_export
from distill_assets.export.merge import merged_model

assets = [merged_model, gguf_export, awq_export]
