import json

import pytest

from distill_assets.lib.training.data import split_dataset
from distill_assets.lib.training.lora import TrainingDivergedError, epoch_table, overfitting_warnings, train_lora
from tests.lib.training.tiny_model import VALIDATION_FRACTION, clean_frame, tiny_plan


def test_adapter_trains_and_is_saved_with_provenance(tiny, tiny_adapter):
    import torch
    from safetensors.torch import load_file

    w = load_file(str(tiny_adapter / "adapter_model.safetensors"))
    lora_b = [v for k, v in w.items() if "lora_B" in k]
    assert lora_b and all(torch.count_nonzero(b) > 0 for b in lora_b)  # B starts at zero: it moved
    meta = json.loads((tiny_adapter / "distill_training.json").read_text())
    ep = meta["epochs"]
    assert len(ep) == 3 and all(e["val_loss"] is not None for e in ep)  # validation every epoch
    assert ep[-1]["train_loss"] < ep[0]["train_loss"] and ep[-1]["val_loss"] < ep[0]["val_loss"]
    assert meta["dataset_version"] == "v-test" and meta["base_model_id"] == "tiny"
    cfg = json.loads((tiny_adapter / "training_config.json").read_text())
    assert cfg["lora_r"] == 8 and cfg["target_modules"][-1] == "down_proj"
    for f in ("tokenizer.json", "chat_template.jinja", "adapter_config.json", "loss_curve.png",
              "train_manifest.json"):
        assert (tiny_adapter / f).exists(), f
    assert (tiny_adapter / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tiny_adapter.parent / "checkpoints").exists()


def test_overfitting_warning():
    hist = [{"loss": 2.0, "epoch": 0.5, "step": 1}, {"eval_loss": 1.5, "epoch": 1.0, "step": 2},
            {"loss": 1.0, "epoch": 1.5, "step": 3}, {"eval_loss": 1.8, "epoch": 2.0, "step": 4}]
    ep = epoch_table(hist)
    assert [e["epoch"] for e in ep] == [1, 2]
    w = overfitting_warnings(ep)
    assert len(w) == 1 and "overfitting at epoch 2" in w[0]
    assert not overfitting_warnings(epoch_table(hist[:2]))


class _Crash(Exception):
    pass


def _crash_at(step):
    from transformers import TrainerCallback

    class CrashAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == step:
                raise _Crash(f"simulated crash at step {step}")

    return CrashAt()


def test_resume_from_checkpoint_after_crash(tiny, tmp_path):
    tr, va, _ = split_dataset(clean_frame(2), VALIDATION_FRACTION)
    plan = tiny_plan(num_train_epochs=1, effective_batch_size=2, per_device_batch_size=2, save_steps=2)
    out = tmp_path / "run"
    with pytest.raises(_Crash):
        # the checkpoint at step 2 is written before on_step_end of step 3 raises... at step 3
        train_lora(tiny["base"], tr, va, plan, out, base_model_id="tiny", dataset_version="v",
                   extra_callbacks=[_crash_at(3)])
    assert (out / "checkpoints" / "checkpoint-2").exists()
    assert not (out / "adapter").exists()  # nothing half-written
    res = train_lora(tiny["base"], tr, va, plan, out, base_model_id="tiny", dataset_version="v")
    assert res.resumed_from and res.resumed_from.endswith("checkpoint-2")
    steps = [h["step"] for h in res.history if "loss" in h]
    assert steps == sorted(set(steps)) and max(steps) == res.global_step == -(-len(tr) // 2)
    assert (res.adapter_dir / ".complete").exists()


def _poison_at(step):
    import torch
    from transformers import TrainerCallback

    class Poison(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step == step:
                with torch.no_grad():
                    for n, p in model.named_parameters():
                        if "lora_A" in n:
                            p.fill_(float("nan"))

    return Poison()


def test_nan_stops_with_clear_error(tiny, tmp_path):
    tr, va, _ = split_dataset(clean_frame(2), VALIDATION_FRACTION)
    plan = tiny_plan(num_train_epochs=1, effective_batch_size=2, per_device_batch_size=2)
    with pytest.raises(TrainingDivergedError, match="no adapter was saved"):
        train_lora(tiny["base"], tr, va, plan, tmp_path / "nan", base_model_id="tiny", dataset_version="v",
                   extra_callbacks=[_poison_at(1)])
    assert not (tmp_path / "nan" / "adapter").exists()
