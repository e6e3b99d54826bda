"""On-policy distillation (GKD) at demo scale, side by side with off-policy KD in one run: the demo's teacher
(SmolLM2-135M-Instruct, converted by scripts/demo.sh) and its pruned student, data/demo, equal steps and data.

Reports per run: wall time, the on-policy step's split into generation and training, generation tokens/s in the
loop vs `kdae generate --input` alone on the same prompts, the student's forward KL to the teacher on answers it
samples itself for held-out prompts, and the held-out (off-policy) KL of `kdae eval`.
Usage: python bench/on_policy.py [--steps 12] [--fraction 0.5] [--new-tokens 48] [--threads 2]"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
import transformers

ROOT = pathlib.Path(__file__).resolve().parents[1]
KDAE = os.environ.get("KDAE_BIN", str(ROOT / "build/kdae"))
HOME = pathlib.Path(os.environ.get("KDAE_HOME", pathlib.Path.home() / ".cache/kdae"))
TEACHER = HOME / "models/smollm2-135m-instruct"


def kdae(*args):
    proc = subprocess.run([KDAE, *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"kdae {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")
    return proc


def student_dir(tmp):
    """The demo's pruned student when present, else every third teacher layer (fast to make)."""
    demo = HOME / "demo/student-init"
    if (demo / "config.json").exists():
        return demo
    out = pathlib.Path(tmp) / "student"
    kdae("prune", "--model", TEACHER, "--out", out, "--prune", "every", "--keep-every", "3")
    return out


def prompts_of(path, n):
    rows = [json.loads(l) for l in pathlib.Path(path).read_text().splitlines()[:n]]
    return [r["messages"][0]["content"] for r in rows]


def distill(tmp, name, student, args, fraction):
    out = pathlib.Path(tmp) / name
    cfg = {"base_model_path": str(student), "target_model_path": str(TEACHER),
           "training_data_path": str(ROOT / "data/demo/train.jsonl"), "output_dir": str(out), "seq_length": 256,
           "learning_rate": 2e-4, "lr_scheduler": "cosine", "warmup_ratio": 0.1, "train_batch_size": 8,
           "max_steps": args.steps, "lambda_param": 1.0, "attn_weight": 0.0, "divergence": "jsd", "jsd_beta": 0.5,
           "on_policy_fraction": fraction, "generation_temperature": 1.0, "max_new_tokens": args.new_tokens,
           "logging_steps": 1, "save_steps": 0, "save_fraction_of_epoch": 0, "device": "cpu", "dtype": "float32",
           "teacher_device": "cpu", "teacher_dtype": "float32", "threads": args.threads, "random_seed": 7}
    path = pathlib.Path(tmp) / f"{name}.yaml"
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in cfg.items()))
    started = time.monotonic()
    kdae("distill", "--config", path)
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    return out, time.monotonic() - started, lines


def generate(model, prompts, tmp, name, args, tokens):
    src = pathlib.Path(tmp) / f"{name}-prompts.jsonl"
    src.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    dst = pathlib.Path(tmp) / f"{name}-answers.jsonl"
    started = time.monotonic()
    kdae("generate", "--model", model, "--chat", "--input", src, "--output", dst, "--batch-size", len(prompts),
         "--temperature", "1.0", "--seed", "3", "--max-new-tokens", tokens, "--threads", args.threads)
    return time.monotonic() - started, [json.loads(l)["response"] for l in dst.read_text().splitlines()]


def standalone_rate(student, prompts, tmp, args):
    """Decode tokens/s of `kdae generate` alone: the time of N new tokens minus that of 1 (load and prefill, which
    the loop's figure includes: the ratio is conservative)."""
    tok = transformers.AutoTokenizer.from_pretrained(student)
    full, answers = generate(student, prompts, tmp, "rate", args, args.new_tokens)
    base, _ = generate(student, prompts, tmp, "rate1", args, 1)
    tokens = sum(len(tok(a, add_special_tokens=False)["input_ids"]) for a in answers) - len(prompts)
    return tokens / max(full - base, 1e-9)


def own_answer_kl(model_dir, prompts, tmp, name, args):
    """Forward KL(p_T || p_S) per answer token on the student's own sampled answers."""
    _, answers = generate(model_dir, prompts, tmp, name, args, args.new_tokens)
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    load = lambda d: transformers.AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32).eval()
    student, teacher = load(model_dir), load(TEACHER)
    total, count = 0.0, 0
    for prompt, answer in zip(prompts, answers):
        head = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        p = tok(head, add_special_tokens=False)["input_ids"]
        a = tok(answer, add_special_tokens=False)["input_ids"]
        if not a:
            continue
        ids = torch.tensor([p + a])
        with torch.no_grad():
            s = F.log_softmax(student(ids).logits[0, len(p) - 1:-1].double(), -1)
            t = F.log_softmax(teacher(ids).logits[0, len(p) - 1:-1].double(), -1)
        total += (t.exp() * (t - s)).sum().item()
        count += len(a)
    return total / max(count, 1)


def held_out_kl(model_dir, args):
    proc = kdae("eval", "--model", model_dir, "--teacher", TEACHER, "--data", ROOT / "data/demo/heldout.jsonl",
                "--set", "seq_length=256", "--set", "device=cpu", "--set", "teacher_dtype=float32",
                "--set", f"threads={args.threads}")
    return {k: float(v) for k, v in (line.split() for line in proc.stdout.splitlines())}["eval/kl"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--prompts", type=int, default=16, help="held-out prompts the students answer themselves")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not (TEACHER / "config.json").exists():
        sys.exit(f"{TEACHER} is missing: run scripts/demo.sh once (it converts the teacher)")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        student = student_dir(tmp)
        runs = {}
        for name, fraction in (("off-policy", 0.0), ("on-policy", args.fraction)):
            out, seconds, lines = distill(tmp, name, student, args, fraction)
            runs[name] = {"dir": out / "model", "seconds": seconds, "lines": lines}
        on = runs["on-policy"]["lines"]
        gen_rates = [m["train/on_policy/generation_tokens_per_second"] for m in on if "train/on_policy/generation_tokens_per_second" in m]
        gen_share = [m["train/on_policy/generation_time_share"] for m in on if "train/on_policy/generation_time_share" in m]
        # The trained student: the pruned one ends most turns at once, which says nothing about decoding speed.
        alone = standalone_rate(runs["on-policy"]["dir"], prompts_of(ROOT / "data/demo/train.jsonl", 8), tmp, args)
        held_prompts = prompts_of(ROOT / "data/demo/heldout.jsonl", args.prompts)
        print(f"# on-policy distillation, {args.steps} steps of 8, fraction {args.fraction}, {args.new_tokens} new tokens, "
              f"{args.threads} threads")
        print("| run | wall s | KL on own answers | held-out KL |")
        print("|---|---|---|---|")
        for name, r in runs.items():
            own = own_answer_kl(r["dir"], held_prompts, tmp, name, args)
            print(f"| {name} | {r['seconds']:.0f} | {own:.3f} | {held_out_kl(r['dir'], args):.3f} |")
        if gen_rates:
            print(f"on-policy steps: generation {statistics.median(gen_share) * 100:.0f}% of step time (median of "
                  f"{len(gen_share)} steps); generation {statistics.median(gen_rates):.0f} tok/s in the loop vs "
                  f"{alone:.0f} tok/s for kdae generate alone (same 8-row batches): "
                  f"{statistics.median(gen_rates) / alone:.2f}x")
        shares = [m["train/on_policy_share"] for m in on]
        print(f"on-policy share realised: {sum(shares) / len(shares):.2f}; mean generated length "
              f"{statistics.mean(m.get('train/on_policy/generated_length', 0) for m in on if 'train/on_policy/generated_length' in m):.1f}; "
              f"EOS rate {statistics.mean(m['train/on_policy/eos_rate'] for m in on if 'train/on_policy/eos_rate' in m):.2f}")


if __name__ == "__main__":
    main()
