"""Offline logit distillation: L = alpha * T^2 * KL_T + (1 - alpha) * CE, on assistant tokens only.

trl's GKDTrainer (trl.experimental.gkd) is on-policy: with lmbda > 0 it generates student samples each step, and its
generalized JSD only reduces to forward/reverse KL at the beta endpoints. The recipe here is the offline one
(teacher logits on the dataset's own answers, temperature T, weight alpha, forward or reverse KL), so this is an
SFTTrainer subclass that keeps SFT's data path (chat template, prompt masking, collator) and replaces only the loss.
Forward KL(p_T || p_S) makes the student cover the teacher's distribution; reverse KL(p_S || p_T) is MiniLLM's
mode-seeking choice for generation.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch  # deferred: heavy optional dependency (type hints only)


def kd_token_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    divergence: str = "forward",
    num_items: int | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, kd, ce) for causal-LM logits [B, L, V] and labels [B, L] (-100 = ignored). Shifts internally."""
    import torch  # deferred: heavy optional dependency
    import torch.nn.functional as F  # deferred: heavy optional dependency

    if divergence not in ("forward", "reverse"):
        raise ValueError(f"kd_divergence must be 'forward' or 'reverse', got {divergence!r}")
    v = min(student_logits.shape[-1], teacher_logits.shape[-1])
    s = student_logits[:, :-1, :v].float()
    t = teacher_logits[:, :-1, :v].float()
    tgt = labels[:, 1:]
    mask = tgt != -100
    n = mask.sum() if num_items is None else torch.as_tensor(num_items, device=s.device)
    n = n.clamp(min=1) if isinstance(n, torch.Tensor) else max(int(n), 1)
    ce = F.cross_entropy(s.reshape(-1, v), tgt.reshape(-1), ignore_index=-100, reduction="sum") / n
    s_sel, t_sel = s[mask] / temperature, t[mask] / temperature
    log_ps = F.log_softmax(s_sel, dim=-1)
    log_pt = F.log_softmax(t_sel, dim=-1)
    if divergence == "forward":
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)
    else:
        kl = (log_ps.exp() * (log_ps - log_pt)).sum(-1)
    # T^2 keeps the soft-target gradient scale comparable to CE across temperatures (Hinton et al.)
    kd = kl.sum() / n * (temperature**2)
    return alpha * kd + (1.0 - alpha) * ce, kd, ce


def load_teacher(teacher_path: str | Path, student_tokenizer, student_model):
    """Load local teacher weights and verify they share the student's tokenizer (same vocab, same ids)."""
    import torch  # deferred: heavy optional dependency
    from transformers import AutoModelForCausalLM, AutoTokenizer  # deferred: heavy optional dependency

    p = Path(str(teacher_path)).expanduser()
    if not (p / "config.json").exists():
        raise FileNotFoundError(
            f"logit_kd needs local teacher weights (an HF folder with config.json); {p} has none. "
            "API-only teachers cannot give logits: use mode 'sft'."
        )
    t_tok = AutoTokenizer.from_pretrained(str(p))
    if t_tok.get_vocab() != student_tokenizer.get_vocab():
        raise ValueError(
            f"teacher tokenizer at {p} differs from the student's (vocab {len(t_tok)} vs {len(student_tokenizer)}); "
            "logit KD needs a shared tokenizer: use mode 'sft'"
        )
    dtype = next(student_model.parameters()).dtype
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        dtype = torch.bfloat16
    teacher = AutoModelForCausalLM.from_pretrained(str(p), dtype=dtype)
    teacher.eval()
    for q in teacher.parameters():
        q.requires_grad_(False)
    info = {"teacher_path": str(p), "teacher_parameters": int(sum(q.numel() for q in teacher.parameters())),
            "shared_vocab": len(student_tokenizer)}
    return teacher, info


@lru_cache(maxsize=1)
def logit_kd_trainer_class():
    """`LogitKDTrainer`: SFTTrainer with the KD loss. Built on first use so importing this module stays light."""
    import torch  # deferred: heavy optional dependency
    from trl import SFTTrainer  # deferred: heavy optional dependency

    class LogitKDTrainer(SFTTrainer):
        def __init__(self, *args, teacher_model, temperature: float, alpha: float, divergence: str, **kwargs):
            super().__init__(*args, **kwargs)
            self.teacher_model = teacher_model.to(self.accelerator.device)
            self.kd_temperature = temperature
            self.kd_alpha = alpha
            self.kd_divergence = divergence

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            labels = inputs["labels"]
            fwd = {k: v for k, v in inputs.items() if k != "labels"}
            fwd["use_cache"] = False
            outputs = model(**fwd)
            with torch.no_grad():
                t_logits = self.teacher_model(**fwd).logits
            loss, kd, ce = kd_token_loss(
                outputs.logits, t_logits, labels, temperature=self.kd_temperature, alpha=self.kd_alpha,
                divergence=self.kd_divergence, num_items=num_items_in_batch if mode == "train" else None,
            )
            if self.args.average_tokens_across_devices and num_items_in_batch is not None and mode == "train":
                loss = loss * self.accelerator.num_processes
            self._metrics[mode]["kd_loss"].append(kd.detach().item())
            self._metrics[mode]["ce_loss"].append(ce.detach().item())
            if mode == "train" and "attention_mask" in inputs:
                self._total_train_tokens += int(inputs["attention_mask"].sum().item())
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return (loss, outputs) if return_outputs else loss

    return LogitKDTrainer
