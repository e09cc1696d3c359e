"""Training tokens/s of `train_lora` vs a plain trl script with the same config, data and threads.

Each side runs in its own subprocess (so peak RSS is per side), in alternating order, on the same student, the same
LoRA shape, sequence length, batch and number of optimizer steps. Tokens = non-pad tokens seen in training (trl's
`num_tokens`), time = trainer `train_runtime` (excludes model load and dataset tokenization on both sides; includes
the end-of-epoch validation pass, which both sides run on the same validation split).

    python benchmarks/train_throughput.py [--model DIR] [--steps 6] [--threads 2] [--repeats 6]
Without --model the embedded SmolLM2-135M student is converted (cached under $DISTILL_HOME/artifacts).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PLAIN = r'''
import json, resource, sys, time, torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer
a = json.loads(sys.argv[1]); torch.set_num_threads(a["threads"]); torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(a["model"])
model = AutoModelForCausalLM.from_pretrained(a["model"], dtype=torch.float32)
d = json.load(open(a["data"]))
ds, val = Dataset.from_list(d["train"]), Dataset.from_list(d["val"])
args = SFTConfig(output_dir=a["out"], max_steps=a["steps"], per_device_train_batch_size=a["bs"],
                 gradient_accumulation_steps=a["accum"], learning_rate=2e-4, lr_scheduler_type="cosine",
                 warmup_steps=0.03, weight_decay=0.01, max_length=a["seq"], logging_steps=1, report_to="none",
                 save_strategy="no", bf16=False, activation_checkpointing=False, disable_tqdm=True,
                 dataloader_pin_memory=False, optim="adamw_torch", seed=42,
                 eval_strategy="epoch", per_device_eval_batch_size=a["bs"])  # ours validates each epoch too
peft = LoraConfig(r=32, lora_alpha=64, lora_dropout=0.05, task_type="CAUSAL_LM",
                  target_modules=["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"])
tr = SFTTrainer(model=model, args=args, train_dataset=ds, eval_dataset=val, processing_class=tok, peft_config=peft)
out = tr.train()
toks = max(h.get("num_tokens", 0) for h in tr.state.log_history)
print("RESULT", json.dumps({"tokens": toks, "runtime": out.metrics["train_runtime"],
      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''

OURS = r'''
import json, sys
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from distill_assets.lib.training.plan import TrainOptions, resolve_plan
from distill_assets.lib.training.lora import train_lora
a = json.loads(sys.argv[1]); d = json.load(open(a["data"]))
plan = resolve_plan(TrainOptions(profile="full", max_steps=a["steps"], per_device_batch_size=a["bs"],
                                effective_batch_size=a["bs"] * a["accum"], max_seq_len=a["seq"],
                                num_threads=a["threads"], save_steps=10**6, gradient_checkpointing=False),
                    cuda_available=False)
r = train_lora(a["model"], d["ours_train"], d["ours_val"], plan, Path(a["out"]), base_model_id="bench",
               dataset_version="b")
print("RESULT", json.dumps({"tokens": r.train_tokens, "runtime": r.train_runtime_s, "peak_rss_mb": r.peak_rss_mb}))
'''


def _run(code: str, args: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args["threads"]), "TOKENIZERS_PARALLELISM": "false"}
    p = subprocess.run([sys.executable, "-c", code, json.dumps(args), str(ROOT)], capture_output=True, text=True,
                       env=env, cwd=ROOT)
    line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
    if p.returncode != 0 or line is None:
        raise RuntimeError(p.stderr[-3000:])
    return json.loads(line[7:])


def main() -> None:
    sys.path.insert(0, str(ROOT))
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--bs", type=int, default=4)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=6)  # single ~9 s runs swing +-20% on a shared 2-core box
    ap.add_argument("--work", default="/tmp/distill-bench")
    a = ap.parse_args()
    from distill_assets.lib.settings import get_settings
    from distill_assets.lib.training.data import split_dataset
    from distill_assets.lib.training.student import resolve_student_base
    from tests.lib.training.tiny_model import VALIDATION_FRACTION, clean_frame

    model = a.model or str(resolve_student_base(None, get_settings().artifacts)[0])
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    tr, va, _ = split_dataset(clean_frame(8), VALIDATION_FRACTION)
    data = work / "data.json"
    # ours takes the conversation records as they are; plain trl gets the same rows as prompt/completion pairs
    pc = lambda rs: [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rs]
    data.write_text(json.dumps({"train": pc(tr), "val": pc(va), "ours_train": tr, "ours_val": va}))
    common = {"model": model, "data": str(data), "steps": a.steps, "threads": a.threads, "seq": a.seq,
              "bs": a.bs, "accum": a.accum}
    results = {"plain_trl": [], "distill": []}
    for i in range(a.repeats):
        order = [("plain_trl", PLAIN), ("distill", OURS)] if i % 2 == 0 else [("distill", OURS), ("plain_trl", PLAIN)]
        for name, code in order:
            import shutil
            shutil.rmtree(work / name, ignore_errors=True)
            results[name].append(_run(code, {**common, "out": str(work / name)}))
    print(f"model={model} steps={a.steps} batch={a.bs}x{a.accum} seq<={a.seq} threads={a.threads} "
          f"repeats={a.repeats}")
    print(f"{'':12s} {'tokens':>8s} {'seconds':>8s} {'tok/s':>8s} {'peak RSS MB':>12s}")
    best = {}
    for name, rs in results.items():
        r = max(rs, key=lambda x: x["tokens"] / x["runtime"])
        best[name] = r["tokens"] / r["runtime"]
        print(f"{name:12s} {int(r['tokens']):8d} {r['runtime']:8.1f} {best[name]:8.1f} {r['peak_rss_mb']:12.0f}")
    print("raw:", json.dumps(results))
    median = {n: statistics.median(r["tokens"] / r["runtime"] for r in rs) for n, rs in results.items()}
    print(f"ratio distill/plain = {best['distill'] / best['plain_trl']:.3f} best-of-{a.repeats}, "
          f"{median['distill'] / median['plain_trl']:.3f} median (target >= 0.95)")


if __name__ == "__main__":
    main()
