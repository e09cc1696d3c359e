"""Sparse KD from stored teacher logprobs: L = alpha * KL_topk + (1 - alpha) * CE, on the teacher's answer tokens.

Logit KD (kd.py) needs the teacher's weights on the training machine. An API teacher gives only the top-k
logprobs of each token it generated (generation.logprobs; teacher_logprobs in the ledger). Sparse KD matches
those: at each answer position the teacher's distribution is its top-k ids (plus the sampled token) and one tail
bucket holding 1 - their mass; the student's distribution is restricted to the same ids plus its own tail mass,
the log-sum-exp of every other logit. The KL of these two (k+2)-point distributions is exact for the buckets and
needs no teacher weights. It runs at temperature 1: servers return logprobs at T = 1, and a tail bucket cannot
be re-tempered.

The student learns the same tokens the teacher generated only when its tokenizer turns the response back into
the teacher's token sequence. Each row is checked after trl tokenizes it: the completion's first tokens must be
the teacher's sampled ids (where the server named a token by lossy text only, the student's token must be part
of a multi-byte character whose readable part is that text: `LossyText`). Where the two tokenizations part ways
later (a whitespace run the teacher sampled as one token), KD covers the agreeing prefix; an answer the teacher
gave through a JSON schema is found inside the teacher's tokens. Rows that do not line up, or have no stored
logprobs, still train on CE; their count by reason is in the trainer's `kd_rows` (and the adapter's metadata).
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from distill_assets.lib.generation.logprobs import LossyText, TeacherTokens, vocab_hash

if TYPE_CHECKING:
    import torch  # deferred: heavy optional dependency (type hints only)

LOG_FLOOR = -50.0  # a zero probability as a finite log, so 0 * log 0 stays 0 and no gradient is inf


def sparse_kd_loss(student_logits: torch.Tensor, labels: torch.Tensor, teacher_ids: torch.Tensor,
                   teacher_logprobs: torch.Tensor, *, alpha: float, divergence: str = "forward",
                   num_items: int | torch.Tensor | None = None):
    """(total, kd, ce, kl_sum, positions) for logits [B, L, V], labels [B, L] (-100 = ignored) and teacher ids /
    logprobs [B, L, K1] indexed by the position of the token they describe (-1 = no id). Shifts internally."""
    import torch  # deferred: heavy optional dependency
    import torch.nn.functional as F  # deferred: heavy optional dependency

    if divergence not in ("forward", "reverse"):
        raise ValueError(f"kd_divergence must be 'forward' or 'reverse', got {divergence!r}")
    v = student_logits.shape[-1]
    s = student_logits[:, :-1].float()
    tgt, tid, tlp = labels[:, 1:], teacher_ids[:, 1:], teacher_logprobs[:, 1:].float()
    mask = tgt != -100
    n = mask.sum() if num_items is None else torch.as_tensor(num_items, device=s.device)
    n = n.clamp(min=1)
    ce = F.cross_entropy(s.reshape(-1, v), tgt.reshape(-1), ignore_index=-100, reduction="sum") / n
    at = mask & (tid >= 0).any(-1)
    positions = at.sum()
    if not bool(positions):
        zero = s.sum() * 0.0  # keeps the graph, so a batch without teacher rows still backpropagates CE
        return alpha * zero + (1.0 - alpha) * ce, zero, ce, zero.detach(), positions
    logits, ids, lp = s[at], tid[at].long(), tlp[at]  # [N, V], [N, K1], [N, K1]
    valid = ids >= 0
    # column 0 is the sampled token; it usually is one of the top k too, and must count once
    valid[:, 0] &= ~(ids[:, :1] == ids[:, 1:]).any(-1)
    safe = ids.clamp(min=0)
    lse = torch.logsumexp(logits, -1)
    log_q = logits.gather(1, safe) - lse[:, None]
    support = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, safe, valid)
    log_q_tail = (torch.logsumexp(logits.masked_fill(support, float("-inf")), -1) - lse).clamp(min=LOG_FLOOR)
    p = torch.where(valid, lp.exp(), torch.zeros_like(lp))
    p = p / p.sum(-1, keepdim=True).clamp(min=1.0)  # float16 rounding can push the top k past 1
    p_tail = (1.0 - p.sum(-1)).clamp(min=0.0)
    if divergence == "forward":  # KL(p_T || p_S): cover the teacher's mass
        kl = (torch.xlogy(p, p) - p * torch.where(valid, log_q, torch.zeros_like(log_q))).sum(-1)
        kl = kl + torch.xlogy(p_tail, p_tail) - p_tail * log_q_tail
    else:  # KL(p_S || p_T): MiniLLM's mode-seeking direction
        q = torch.where(valid, log_q.exp(), torch.zeros_like(log_q))
        log_p = torch.log(p.clamp(min=1e-30)).clamp(min=LOG_FLOOR)
        kl = (q * (torch.where(valid, log_q, torch.zeros_like(log_q)) - log_p)).sum(-1)
        log_p_tail = torch.log(p_tail.clamp(min=1e-30)).clamp(min=LOG_FLOOR)
        kl = kl + log_q_tail.exp() * (log_q_tail - log_p_tail)
    kl_sum = kl.sum()
    kd = kl_sum / n
    return alpha * kd + (1.0 - alpha) * ce, kd, ce, kl_sum.detach(), positions


USABLE = ("aligned", "truncated", "prefix", "inner")
MIN_PREFIX = 4  # a shorter agreeing prefix is not worth a KD row


def _inner(sampled: np.ndarray, run: np.ndarray) -> int | None:
    """Where the student's answer tokens sit inside the teacher's (an answer sent through a JSON schema, e.g.
    `{"label": "refund"}` trained as `refund`), allowing the run's last two tokens (end of turn) to be absent."""
    for n in range(len(run), max(len(run) - 3, 0), -1):
        head = run[:n]
        for off in range(0, len(sampled) - n + 1):
            if sampled[off] == head[0] and np.array_equal(sampled[off:off + n], head):
                return off
    return None


def align(input_ids: list[int], labels: list[int], teacher: TeacherTokens | None,
          lossy: LossyText) -> tuple[str, tuple[int, np.ndarray, np.ndarray] | None]:
    """(reason, (start, ids, logprobs)) of one tokenized row: `start` is the input position of the teacher's
    first usable token. reason: aligned | truncated (aligned, cut by max_length) | prefix (the tokenizations part
    ways later on, e.g. a whitespace run the teacher sampled as one token: KD up to there) | inner (the answer
    sits inside the teacher's structured output) | no_logprobs | token_mismatch."""
    if teacher is None or not len(teacher.ids):
        return "no_logprobs", None
    # the teacher's logprobs are of the last assistant turn: the last run of trained tokens
    end = next((i for i in range(len(labels) - 1, -1, -1) if labels[i] != -100), None)
    if end is None:
        return "no_logprobs", None
    start = end
    while start > 0 and labels[start - 1] != -100:
        start -= 1
    completion = np.asarray(input_ids[start:], dtype=np.int64)
    m = min(len(teacher.ids), len(completion))
    sampled = teacher.ids[:m, 0].astype(np.int64)
    same = lossy.same_as_sent(sampled, completion[:m])
    if not same.all():
        k = int(np.argmin(same))  # the first position where they differ
        if k >= MIN_PREFIX:
            ids = teacher.ids[:k].copy()
            ids[:, 0] = completion[:k]
            return "prefix", (start, ids, teacher.logprobs[:k])
        run = np.asarray(input_ids[start:end + 1], dtype=np.int64)
        off = _inner(teacher.ids[:, 0].astype(np.int64), run)
        if off is None:
            return "token_mismatch", None
        n = min(len(run), len(teacher.ids) - off)
        ids = teacher.ids[off:off + n].copy()
        n = int(np.argmin(np.append(ids[:, 0] == run[:n], False)))  # the matched part only
        ids = ids[:n]
        return "inner", (start, ids, teacher.logprobs[off:off + n])
    ids = teacher.ids[:m].copy()
    ids[:, 0] = completion[:m]  # where the server's text was lossy, the student's token is the one it sampled
    return ("aligned" if m == len(teacher.ids) else "truncated"), (start, ids, teacher.logprobs[:m])


def check_tokenizer(student_hash: str, teachers: dict[str, TeacherTokens]) -> None:
    """The ids were mapped with the tokenizer recorded in each row; it must be the student's."""
    if not teachers:
        raise ValueError("sparse_kd: no clean_dataset row has teacher logprobs; set `generation: {logprobs: 5}` "
                         "for the categories in the task file and rematerialize raw_generations, or use mode 'sft'")
    other = Counter((t.tokenizer, t.model) for t in teachers.values() if t.tokenizer != student_hash)
    if other:
        (tok, model), n = other.most_common(1)[0]
        raise ValueError(
            f"sparse_kd: {sum(other.values())} row(s) hold teacher logprobs mapped with tokenizer {tok} (teacher "
            f"{model!r}, e.g. {n} rows), but the student's tokenizer is {student_hash}. Sparse KD needs teacher "
            "and student to share one tokenizer: regenerate with this student, or use mode 'sft'")


@lru_cache(maxsize=1)
def sparse_kd_trainer_class():
    """`SparseKDTrainer`: SFTTrainer with the sparse KD loss. Built on first use to keep imports light."""
    import torch  # deferred: heavy optional dependency
    from trl import SFTTrainer  # deferred: heavy optional dependency

    class _WithKdRow:
        """The SFT collator, plus each example's index into the trainer's teacher rows."""

        def __init__(self, inner):
            self.inner = inner

        def __call__(self, examples):
            out = self.inner(examples)
            out["kd_row"] = torch.tensor([int(e["kd_row"]) for e in examples])
            return out

    class SparseKDTrainer(SFTTrainer):
        def __init__(self, *args, teacher_rows: list[TeacherTokens | None], lossy: LossyText, alpha: float,
                     divergence: str, **kwargs):
            super().__init__(*args, **kwargs)
            self.kd_alpha, self.kd_divergence = alpha, divergence
            self.kd_aligned: dict[int, tuple[int, torch.Tensor, torch.Tensor]] = {}
            self.kd_rows: dict[str, dict[str, int]] = {}
            for split, ds in (("train", self.train_dataset), ("validation", self.eval_dataset)):
                counts: Counter = Counter()
                for ids, labels, row in zip(ds["input_ids"], ds["labels"], ds["kd_row"]):
                    reason, got = align(ids, labels, teacher_rows[row], lossy)
                    counts[reason] += 1
                    if got is not None:
                        start, t_ids, t_lps = got
                        self.kd_aligned[row] = (start, torch.from_numpy(t_ids.astype(np.int64)),
                                                torch.from_numpy(t_lps.astype(np.float32)))
                self.kd_rows[split] = dict(counts)
            self.data_collator = _WithKdRow(self.data_collator)

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if "kd_row" not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, "kd_row"]

        def _teacher_batch(self, rows: torch.Tensor, shape: torch.Size, device) -> tuple[torch.Tensor, ...]:
            got = [self.kd_aligned.get(int(r)) for r in rows]
            k1 = max((g[1].shape[1] for g in got if g is not None), default=1)
            ids = torch.full((*shape, k1), -1, dtype=torch.long)
            lps = torch.full((*shape, k1), float("-inf"))
            for b, g in enumerate(got):
                if g is None:
                    continue
                start, t_ids, t_lps = g
                m = min(t_ids.shape[0], shape[1] - start)
                ids[b, start:start + m, :t_ids.shape[1]] = t_ids[:m]
                lps[b, start:start + m, :t_ids.shape[1]] = t_lps[:m]
            return ids.to(device), lps.to(device)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            rows = inputs.pop("kd_row")
            labels = inputs["labels"]
            fwd = {k: v for k, v in inputs.items() if k != "labels"}
            fwd["use_cache"] = False
            outputs = model(**fwd)
            t_ids, t_lps = self._teacher_batch(rows, labels.shape, labels.device)
            loss, kd, ce, kl_sum, positions = sparse_kd_loss(
                outputs.logits, labels, t_ids, t_lps, alpha=self.kd_alpha, divergence=self.kd_divergence,
                num_items=num_items_in_batch if mode == "train" else None,
            )
            if self.args.average_tokens_across_devices and num_items_in_batch is not None and mode == "train":
                loss = loss * self.accelerator.num_processes
            self._metrics[mode]["kd_loss"].append(kd.detach().item())
            self._metrics[mode]["ce_loss"].append(ce.detach().item())
            if int(positions):  # the mean KL per covered token, comparable across batches and accumulation
                self._metrics[mode]["kd_kl"].append((kl_sum / positions).item())
            if mode == "train" and "attention_mask" in inputs:
                self._total_train_tokens += int(inputs["attention_mask"].sum().item())
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return (loss, outputs) if return_outputs else loss

    return SparseKDTrainer


def sparse_kd_trainer(trainer_kwargs: dict, tokenizer, train_records: list[dict], val_records: list[dict],
                      teacher: dict[str, TeacherTokens], plan) -> tuple[object, dict]:
    """The trainer over the tokenized datasets in `trainer_kwargs`, each row given a `kd_row` index into the
    records' teacher logprobs, and what it found (for the adapter's metadata)."""
    student = vocab_hash(tokenizer)
    check_tokenizer(student, teacher)
    rows: list[TeacherTokens | None] = []

    def frame(ds, records: list[dict]):
        index = []
        for r in records:
            index.append(len(rows))
            rows.append(teacher.get(r.get("example_id", "")))
        return ds.add_column("kd_row", index)

    kwargs = {**trainer_kwargs, "train_dataset": frame(trainer_kwargs["train_dataset"], train_records),
              "eval_dataset": frame(trainer_kwargs["eval_dataset"], val_records)}
    trainer = sparse_kd_trainer_class()(teacher_rows=rows, lossy=LossyText.of(tokenizer), alpha=plan.kd_alpha,
                                        divergence=plan.kd_divergence, **kwargs)
    usable = sum(n for reason, n in trainer.kd_rows["train"].items() if reason in USABLE)
    if not usable:
        raise ValueError(f"sparse_kd: no training row lines up with its teacher logprobs {trainer.kd_rows['train']}; "
                         "token_mismatch means the student's tokens of the response are not the teacher's (another "
                         "tokenizer, or the response was changed after generation): use mode 'sft'")
    info = {"mode": "sparse_kd", "tokenizer": student, "kd_alpha": plan.kd_alpha, "divergence": plan.kd_divergence,
            "teacher_models": sorted({t.model for t in teacher.values()}),
            "top_k": sorted({t.k for t in teacher.values()}), "rows": trainer.kd_rows}
    return trainer, info
