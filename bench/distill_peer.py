"""The Python peer of `kdae distill` for bench/run_distill.sh: the same KD step written the way a
transformers user writes it (the reference code's structure): teacher forward under no_grad, student
forward, forward KL over the full vocabulary with log_softmax on the supervised positions, AdamW.
Prints one line: tokens/s (median over steps after the first) and peak RSS.

usage: distill_peer.py STUDENT TEACHER DATA.jsonl BATCH STEPS THREADS
"""
import json
import resource
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def batches(tok, path, batch):
    rows = [json.loads(l) for l in open(path)]
    for i in range(0, len(rows) - batch + 1, batch):
        ids, masks = [], []
        for r in rows[i:i + batch]:
            prompt = tok.apply_chat_template(r["messages"][:1], tokenize=False, add_generation_prompt=True)
            full = tok.apply_chat_template(r["messages"], tokenize=False)
            p, f = tok(prompt, add_special_tokens=False)["input_ids"], tok(full, add_special_tokens=False)["input_ids"]
            ids.append(f)
            masks.append([0] * len(p) + [1] * (len(f) - len(p)))
        width = max(len(x) for x in ids)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        yield (torch.tensor([x + [pad] * (width - len(x)) for x in ids]),
               torch.tensor([m + [0] * (width - len(m)) for m in masks], dtype=torch.bool))


def main():
    student_dir, teacher_dir, data, batch, steps, threads = sys.argv[1:7]
    torch.set_num_threads(int(threads))
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(student_dir)
    student = AutoModelForCausalLM.from_pretrained(student_dir, torch_dtype=torch.float32, attn_implementation="sdpa")
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, torch_dtype=torch.float32, attn_implementation="sdpa").eval()
    student.train()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=0.0)
    rates = []
    for step, (ids, mask) in enumerate(batches(tok, data, int(batch))):
        if step == int(steps):
            break
        start = time.perf_counter()
        with torch.no_grad():
            t_logits = teacher(ids).logits
        s_logits = student(ids).logits
        sel = mask[:, 1:]  # logits at t predict token t + 1
        s = torch.log_softmax(s_logits[:, :-1][sel].float(), -1)
        t = torch.log_softmax(t_logits[:, :-1][sel].float(), -1)
        loss = (t.exp() * (t - s)).sum(-1).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens = int((ids != (tok.pad_token_id or 0)).sum())
        rates.append(tokens / (time.perf_counter() - start))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peer transformers: {statistics.median(rates[1:]):.1f} tok/s (median of {len(rates) - 1} steps), "
          f"peak RSS {rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
