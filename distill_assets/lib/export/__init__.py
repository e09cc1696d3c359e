"""Export library: merge (LoRA into the base), gguf (llama.cpp conversion + quantization), parity (thresholds and
verdicts of the conversion checks), AWQ. Heavy imports stay inside functions."""
