import pytest
import torch
import torch.nn.functional as F

from distill_assets.lib.training.data import split_dataset
from distill_assets.lib.training.kd import kd_token_loss
from distill_assets.lib.training.lora import train_lora
from tests.lib.training.tiny_model import VALIDATION_FRACTION, _cached, clean_frame, make_tiny_model, tiny_plan


def _logits(seed, b=2, l=5, v=11):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, l, v, generator=g) * 2


def test_kd_loss_math():
    s, t = _logits(0), _logits(1)
    labels = torch.randint(0, 11, (2, 5))
    labels[:, :2] = -100
    total, kd, ce = kd_token_loss(s, s.clone(), labels, temperature=2.0, alpha=0.5)
    assert kd.abs() < 1e-5  # identical distributions
    ref_ce = F.cross_entropy(s[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(ce, ref_ce, atol=1e-5)
    _, fwd, _ = kd_token_loss(s, t, labels, temperature=2.0, alpha=0.5, divergence="forward")
    _, rev, _ = kd_token_loss(s, t, labels, temperature=2.0, alpha=0.5, divergence="reverse")
    assert fwd > 0 and rev > 0 and not torch.allclose(fwd, rev)
    tot, kd1, ce1 = kd_token_loss(s, t, labels, temperature=1.0, alpha=0.25)
    assert torch.allclose(tot, 0.25 * kd1 + 0.75 * ce1)
    with pytest.raises(ValueError):
        kd_token_loss(s, t, labels, temperature=1.0, alpha=0.5, divergence="sideways")


@pytest.mark.parametrize("divergence", ["forward", "reverse"])
def test_logit_kd_training_with_tiny_teacher(tiny, tmp_path, divergence):
    teacher = _cached(tiny["root"], "teacher", lambda d: make_tiny_model(d, tiny["tokenizer"], seed=7, layers=3))
    tr, va, _ = split_dataset(clean_frame(2), VALIDATION_FRACTION)
    plan = tiny_plan(mode="logit_kd", teacher_model_path=str(teacher), kd_divergence=divergence,
                     num_train_epochs=2, effective_batch_size=4)
    res = train_lora(tiny["base"], tr, va, plan, tmp_path / "kd", base_model_id="tiny", dataset_version="v")
    kd_logs = [h["kd_loss"] for h in res.history if "kd_loss" in h]
    assert kd_logs and all(v == v and v >= 0 for v in kd_logs)
    assert res.kd["teacher_path"] == str(teacher)
    assert res.epochs[-1]["train_loss"] < res.epochs[0]["train_loss"]


def test_kd_rejects_other_tokenizer(tiny, tmp_path):
    from transformers import AutoTokenizer

    from distill_assets.lib.training.kd import load_teacher

    odd = tmp_path / "odd"
    make_tiny_model(odd, tiny["tokenizer"])
    tok = AutoTokenizer.from_pretrained(str(odd))
    tok.add_tokens(["<extra_kd_token>"])
    tok.save_pretrained(odd)
    with pytest.raises(ValueError, match="shared tokenizer"):
        load_teacher(odd, AutoTokenizer.from_pretrained(str(tiny["base"])), torch.nn.Linear(1, 1))
    with pytest.raises(FileNotFoundError, match="local teacher"):
        load_teacher(tmp_path / "missing", None, None)
