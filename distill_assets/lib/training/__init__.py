"""Training library: plan (defaults, profiles), data (records, split), lora (train_lora), kd (logit KD loss),
student (the HF student base). Heavy imports (torch, transformers, trl, peft) stay inside functions."""
