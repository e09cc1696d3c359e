"""Training stage: `student_base_model` -> `lora_adapter` (SFT or logit KD). Heavy imports stay inside functions."""

from distill_assets.training.lora import lora_adapter
from distill_assets.training.student import student_base_model

assets = [student_base_model, lora_adapter]
