"""Sparse KD from stored top-k teacher logprobs: the loss, the row alignment, and training the tiny student."""

import math

import numpy as np
import pytest
import torch

from distill_assets.lib.generation.logprobs import LossyText, TeacherTokens, vocab_hash
from distill_assets.lib.training.data import split_dataset
from distill_assets.lib.training.kd import kd_token_loss
from distill_assets.lib.training.lora import train_lora
from distill_assets.lib.training.sparse_kd import align, check_tokenizer, sparse_kd_loss
from tests.lib.training.tiny_model import VALIDATION_FRACTION, clean_frame, tiny_plan


def _case(seed=0, b=2, l=6, v=13):
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(b, l, v, generator=g) * 2, torch.randn(b, l, v, generator=g) * 2
    labels = torch.randint(0, v, (b, l), generator=g)
    labels[:, :2] = -100
    return s, t, labels


def _topk(logits, k):
    """Teacher tensors as stored: [sampled = argmax, top-k ids], logprobs at T=1, placed at each label position."""
    lp = torch.log_softmax(logits, -1)
    top = lp.topk(k, -1)
    ids = torch.cat([top.indices[..., :1], top.indices], -1)
    lps = torch.cat([top.values[..., :1], top.values], -1)
    # stored per described token: the distribution of token j comes from the logits at j - 1
    out_ids = torch.full_like(ids, -1)
    out_lps = torch.full_like(lps, float("-inf"))
    out_ids[:, 1:], out_lps[:, 1:] = ids[:, :-1], lps[:, :-1]
    return out_ids, out_lps


def test_full_support_is_the_dense_kl_and_top_k_bounds_it():
    s, t, labels = _case()
    ids, lps = _topk(t, t.shape[-1])
    _, kd_full, ce, _, _ = sparse_kd_loss(s, labels, ids, lps, alpha=0.5)
    _, dense, ce_dense = kd_token_loss(s, t, labels, temperature=1.0, alpha=0.5)
    assert torch.allclose(kd_full, dense, atol=1e-4) and torch.allclose(ce, ce_dense, atol=1e-5)
    ids3, lps3 = _topk(t, 3)
    _, kd3, _, _, positions = sparse_kd_loss(s, labels, ids3, lps3, alpha=0.5)
    assert 0 < kd3 < dense  # bucketing the tail can only lose information
    assert int(positions) == int((labels[:, 1:] != -100).sum())
    rev_total, rev, _, _, _ = sparse_kd_loss(s, labels, ids3, lps3, alpha=0.25, divergence="reverse")
    assert rev > 0 and not torch.allclose(rev, kd3) and torch.allclose(rev_total, 0.25 * rev + 0.75 * ce)


def test_a_student_equal_to_its_teacher_has_zero_kl_and_the_sampled_column_counts_once():
    s, _, labels = _case(1)
    ids, lps = _topk(s, 4)
    for div in ("forward", "reverse"):
        assert sparse_kd_loss(s, labels, ids, lps, alpha=0.5, divergence=div)[1].abs() < 1e-5
    _, t, _ = _case(2)
    ti, tl = _topk(t, 4)
    a = sparse_kd_loss(s, labels, ti, tl, alpha=0.5)[1]
    ti2 = ti.clone()
    ti2[..., 0] = -1  # the sampled id unknown: it is among the top k anyway, so the same buckets and KL
    assert torch.allclose(a, sparse_kd_loss(s, labels, ti2, tl, alpha=0.5)[1], atol=1e-6)


def test_no_teacher_rows_leaves_plain_ce_with_a_gradient():
    s, _, labels = _case(3)
    s.requires_grad_(True)
    ids = torch.full((*labels.shape, 3), -1)
    total, kd, ce, _, positions = sparse_kd_loss(s, labels, ids, torch.zeros(ids.shape), alpha=0.5)
    assert kd == 0 and int(positions) == 0 and torch.allclose(total, 0.5 * ce)
    total.backward()
    assert s.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        sparse_kd_loss(s, labels, ids, torch.zeros(ids.shape), alpha=0.5, divergence="sideways")


def _teacher(ids, k=4, tokenizer="t", alts=(3, 5, 7, 11)):
    n = len(ids)
    out = np.full((n, k + 1), -1, dtype=np.int32)
    out[:, 0] = ids
    out[:, 1] = ids
    for j in range(k - 1):
        out[:, j + 2] = [a if a != i else alts[-1] + 1 for a, i in zip([alts[j]] * n, ids)]
    probs = np.array([0.7, 0.7, 0.1, 0.06, 0.04][: k + 1])
    return TeacherTokens(out, np.log(np.tile(probs, (n, 1))).astype(np.float16), tokenizer, "synthetic")


def test_align_checks_the_teacher_tokens_against_the_students(tiny):
    from transformers import AutoTokenizer

    lossy = LossyText.of(AutoTokenizer.from_pretrained(str(tiny["base"])))
    labels = [-100, -100, 10, 11, 12, 2, 13]
    ids = [1, 9, 10, 11, 12, 2, 13]
    reason, got = align(ids, labels, _teacher([10, 11, 12]), lossy)
    assert reason == "aligned" and got[0] == 2 and got[1][:, 0].tolist() == [10, 11, 12]
    assert align(ids, labels, _teacher([10, 12, 11]), lossy)[0] == "token_mismatch"
    assert align(ids, labels, _teacher([10, -1, 12]), lossy)[0] == "token_mismatch"  # id 11 has text of its own
    assert align(ids[:4], labels[:4], _teacher([10, 11, 12]), lossy)[0] == "truncated"
    assert align(ids, labels, None, lossy) == ("no_logprobs", None)
    # a conversation: the teacher's logprobs are of the last assistant turn, not the first
    conv_ids = [1, 7, 8, 2, 9, 10, 11, 12, 2]
    conv_labels = [-100, 7, 8, -100, -100, 10, 11, 12, -100]
    reason, got = align(conv_ids, conv_labels, _teacher([10, 11, 12]), lossy)
    assert reason == "aligned" and got[0] == 5
    # the tokenizations part ways after 4 tokens (a whitespace run sampled as one token): KD on the prefix
    long_ids, long_labels = [1, 9, 10, 11, 12, 14, 15, 16, 2], [-100, -100, 10, 11, 12, 14, 15, 16, 2]
    reason, got = align(long_ids, long_labels, _teacher([10, 11, 12, 14, 17, 16]), lossy)
    assert reason == "prefix" and got[0] == 2 and got[1][:, 0].tolist() == [10, 11, 12, 14]
    assert align(long_ids, long_labels, _teacher([10, 11, 17, 14, 15, 16]), lossy)[0] == "token_mismatch"
    # a label answered through a JSON schema ({"label": "..."}), trained as the label: found inside
    label_ids, label_labels = [1, 9, 10, 11, 2], [-100, -100, 10, 11, 2]
    reason, got = align(label_ids, label_labels, _teacher([20, 21, 22, 10, 11, 23, 24]), lossy)
    assert reason == "inner" and got[0] == 2 and got[1][:, 0].tolist() == [10, 11]


def test_another_tokenizer_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="share one tokenizer"):
        check_tokenizer("vocab-student", {"e1": _teacher([1], tokenizer="vocab-gpt")})
    with pytest.raises(ValueError, match="generation: {logprobs"):
        check_tokenizer("vocab-student", {})
    check_tokenizer("vocab-student", {"e1": _teacher([1], tokenizer="vocab-student")})


def test_sparse_kd_training_lowers_the_kl(tiny, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny["base"]))
    tr, va, _ = split_dataset(clean_frame(2), VALIDATION_FRACTION)
    alts = tuple(tok(w, add_special_tokens=False)["input_ids"][0] for w in ("Hello", " the", "5", "."))
    teacher = {r["example_id"]: _teacher(tok(r["messages"][-1]["content"], add_special_tokens=False)["input_ids"],
                                         tokenizer=vocab_hash(tok), alts=alts) for r in tr + va}
    del teacher[tr[0]["example_id"]]  # no logprobs for this one
    bad = teacher[tr[1]["example_id"]]
    bad.ids[:, 0] = bad.ids[::-1, 0] + 1  # not the tokens the student reads
    plan = tiny_plan(mode="sparse_kd", kd_alpha=0.5, num_train_epochs=5, effective_batch_size=4)
    res = train_lora(tiny["base"], tr, va, plan, tmp_path / "skd", base_model_id="tiny", dataset_version="v",
                     teacher_logprobs=teacher)
    rows = res.kd["rows"]
    assert rows["train"] == {"aligned": len(tr) - 2, "no_logprobs": 1, "token_mismatch": 1}
    assert rows["validation"] == {"aligned": len(va)}
    assert res.kd["top_k"] == [4] and res.kd["tokenizer"] == vocab_hash(tok)
    kl = [h["kd_kl"] for h in res.history if "kd_kl" in h and "loss" in h]
    assert len(kl) >= 10 and all(math.isfinite(v) for v in kl)
    first, last = np.mean(kl[:3]), np.mean(kl[-3:])
    print("kd_kl per step:", [round(v, 3) for v in kl])
    assert last < 0.7 * first, kl  # the student moves toward the teacher's top-k distribution
    assert any("eval_ce_loss" in h and "eval_kd_kl" in h for h in res.history)
