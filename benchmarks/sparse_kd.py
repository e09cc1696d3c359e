"""SFT vs SFT + sparse KD on the same data: held-out loss and training tokens/s, side by side.

1. The embedded teacher (llama.cpp, SmolLM2-135M-Instruct Q4_1) answers the first demo seeds of each category
   with `generation.logprobs` top-k, through the real generation path (lib/generation/plan.generate) into a
   ledger under --work; a rerun answers from its call cache.
2. Each trainer runs in its own subprocess on the same student, split, LoRA shape, batch and epochs:
   `sft` (plain trl SFTTrainer, the tokens/s baseline), `kd_alpha_0` (the sparse-KD trainer with alpha 0: the
   SFT objective, but it also measures the held-out KL to the teacher) and `sparse_kd` (alpha --alpha).
   Held-out CE = mean NLL of the held-out teacher answers' tokens; held-out KL = the top-k + tail KL to the
   teacher on those tokens; tokens/s = non-pad tokens seen / trainer `train_runtime` (includes validation).

    python benchmarks/sparse_kd.py [--model DIR] [--prompts 32] [--max-tokens 48] [--epochs 2] [--threads 2]
Without --model the embedded SmolLM2-135M student is converted (cached under $DISTILL_HOME/artifacts). That
student is the teacher's own weights (fp32 vs Q4_1), so this measures cost and mechanics more than gains.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TRAIN = r'''
import json, sys
sys.path.insert(0, sys.argv[2])
from pathlib import Path
import pandas as pd
from distill_assets.lib.generation.logprobs import example_logprobs
from distill_assets.lib.ledger import open_store
from distill_assets.lib.training.data import split_dataset
from distill_assets.lib.training.lora import train_lora
from distill_assets.lib.training.plan import TrainOptions, resolve_plan
a = json.loads(sys.argv[1])
clean = pd.read_json(a["clean"], orient="records")
tr, va, _ = split_dataset(clean, 0.2)
mode = "sft" if a["side"] == "sft" else "sparse_kd"
plan = resolve_plan(TrainOptions(profile="full", mode=mode, kd_alpha=a["alpha"], num_train_epochs=a["epochs"],
                                per_device_batch_size=a["bs"], effective_batch_size=a["bs"], max_seq_len=a["seq"],
                                num_threads=a["threads"], save_steps=10**6, gradient_checkpointing=False),
                    cuda_available=False)
teacher = example_logprobs(open_store(a["db"]), clean) if mode == "sparse_kd" else None
r = train_lora(a["model"], tr, va, plan, Path(a["out"]), base_model_id="bench", dataset_version="b",
               teacher_logprobs=teacher, log=lambda m: None)
last = [h for h in r.history if "eval_loss" in h][-1]
print("RESULT", json.dumps({"tokens": r.train_tokens, "runtime": r.train_runtime_s, "steps": r.global_step,
      "heldout_ce": last.get("eval_ce_loss", last["eval_loss"]), "heldout_kl": last.get("eval_kd_kl"),
      "train": len(tr), "validation": len(va), "kd_rows": (r.kd or {}).get("rows")}))
'''


def _run(args: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args["threads"]), "TOKENIZERS_PARALLELISM": "false"}
    p = subprocess.run([sys.executable, "-c", TRAIN, json.dumps(args), str(ROOT)], capture_output=True, text=True,
                       env=env, cwd=ROOT)
    line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
    if p.returncode != 0 or line is None:
        raise RuntimeError(p.stderr[-3000:])
    return json.loads(line[7:])


def teacher_data(work: Path, prompts: int, max_tokens: int, k: int, threads: int):
    """Generate (or reuse) the teacher answers with top-k logprobs; returns (clean frame, db path, stats)."""
    import pandas as pd

    from distill_assets.defs.resources import embedded_llm
    from distill_assets.lib.generation.logprobs import student_token_map
    from distill_assets.lib.generation.plan import generate
    from distill_assets.lib.ledger import open_store
    from distill_assets.lib.records import load_seed_file
    from distill_assets.lib.tasks import load_tasks

    db = work / "bench.duckdb"
    store = open_store(str(db))
    frames, cached, calls = [], 0, 0
    cats = load_tasks().categories
    with embedded_llm(embedded_threads=threads).session(store, token_map=student_token_map()) as session:
        for c in cats:
            n = -(-prompts // len(cats))
            cat = c.model_copy(update={"samples_per_prompt": 1, "max_tokens": max_tokens,
                                       "methods": c.methods.model_validate({"response": n}),
                                       "generation": c.generation.model_copy(update={"logprobs": k})})
            df, stats = generate(cat, load_seed_file(cat.seeds, cat), session)
            frames.append(df)
            cached, calls = cached + stats.cached, calls + stats.calls
    raw = pd.concat(frames, ignore_index=True)
    with store.connect() as conn:  # the lineage that sparse_kd follows: generation_id -> call_key
        conn.execute("DROP TABLE IF EXISTS raw_generations")
    store.insert_df("raw_generations", raw[["generation_id", "call_key", "category", "messages"]])
    clean = raw[["example_id", "generation_id", "category", "messages"]].assign(split="train")
    return clean, db, {"calls": calls, "from_cache": cached}


def main() -> None:
    sys.path.insert(0, str(ROOT))
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--bs", type=int, default=4)
    ap.add_argument("--work", default="/tmp/distill-bench-sparse-kd")
    a = ap.parse_args()
    from distill_assets.lib.settings import get_settings
    from distill_assets.lib.training.student import resolve_student_base

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    clean, db, gen = teacher_data(work, a.prompts, a.max_tokens, a.top_k, a.threads)
    (work / "clean.json").write_text(clean.to_json(orient="records"))
    model = a.model or str(resolve_student_base(None, get_settings().artifacts)[0])
    common = {"model": model, "clean": str(work / "clean.json"), "db": str(db), "epochs": a.epochs,
              "threads": a.threads, "seq": a.seq, "bs": a.bs}
    results = {}
    for side, alpha in (("sft", 0.0), ("kd_alpha_0", 0.0), ("sparse_kd", a.alpha)):
        import shutil

        shutil.rmtree(work / side, ignore_errors=True)
        results[side] = _run({**common, "side": side, "alpha": alpha, "out": str(work / side)})
    r0 = results["sft"]
    print(f"model={model} teacher=embedded SmolLM2-135M Q4_1 top-{a.top_k} answers={len(clean)} "
          f"(train {r0['train']}, held out {r0['validation']}; teacher calls {gen['calls']}, "
          f"{gen['from_cache']} from cache) epochs={a.epochs} batch={a.bs} seq<={a.seq} threads={a.threads}")
    print(f"{'':11s} {'objective':>22s} {'steps':>5s} {'tokens':>7s} {'seconds':>8s} {'tok/s':>7s} "
          f"{'held-out CE':>11s} {'held-out KL':>11s}")
    objective = {"sft": "CE (plain trl)", "kd_alpha_0": "CE (sparse-KD trainer)",
                 "sparse_kd": f"{a.alpha}*KL + {1 - a.alpha:g}*CE"}
    for side, r in results.items():
        kl = "-" if r["heldout_kl"] is None else f"{r['heldout_kl']:.4f}"
        print(f"{side:11s} {objective[side]:>22s} {r['steps']:5d} {int(r['tokens']):7d} {r['runtime']:8.1f} "
              f"{r['tokens'] / r['runtime']:7.1f} {r['heldout_ce']:11.4f} {kl:>11s}")
    kd = results["sparse_kd"]
    print(f"tok/s sparse_kd / sft = {kd['tokens'] / kd['runtime'] / (r0['tokens'] / r0['runtime']):.3f}; "
          f"sparse-KD rows: {kd['kd_rows']}")
    print("raw:", json.dumps(results))


if __name__ == "__main__":
    main()
