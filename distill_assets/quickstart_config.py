"""The quickstart's run config, apart from the code that runs it."""

# The quickstart's run config: a CPU-sized evaluation (the eval_report defaults evaluate every held-out item).
# classify's short answers are evaluated on every held-out item (the demo's proof needs n >= 40), the other
# categories on 10 each. Only q8_0 of the GGUF exports is evaluated (gguf_export's parity check compares all three
# with the merged model). The pairwise judge rates only support. Base and merged answer from f16 GGUF files.
QUICKSTART_OPS_CONFIG: dict[str, dict] = {
    "eval_report": {"max_examples_per_category": 10, "uncapped_categories": ["classify"], "max_new_tokens": 64,
                    "judge_max_tokens": 48, "judge_exports": False, "judge_scope": "open_ended",
                    "gguf_kinds": ["gguf_q8_0"], "student_backend": "llama.cpp"},
    # AWQ on CPU: 16 calibration blocks of 256 tokens in 2 batches and a 5-point scale grid (defaults: 64 x 512, 20)
    "awq_export": {"calibration_samples": 16, "seq_len": 256, "batch_size": 8, "n_grid": 5},
    # a few epochs over ~50 verified rows, without LoRA dropout (it costs ~10% of a CPU step)
    "lora_adapter": {"num_train_epochs": 4.0, "effective_batch_size": 4, "per_device_batch_size": 4,
                     "lora_dropout": 0.0},
}
