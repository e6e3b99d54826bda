"""The Python peer of `kdae distill` for bench/run_distill.sh: one KD step done the way the reference
code does it (transformers + torch, eager attention with output_attentions=True so both models
return every layer's attention maps, the student's CE from labels as in HF's loss, full-vocabulary
log_softmax/softmax with KLDivLoss for L_pred, row-wise KL of the mapped layers' attention rows for
L_attn, torch AdamW). The teacher runs under no_grad. Prints one line: tokens/s (median over steps
after the first) and peak RSS.

usage: distill_peer.py STUDENT TEACHER DATA.jsonl BATCH STEPS THREADS SEQ [ATTN_WEIGHT]
(ATTN_WEIGHT 0: L_pred only, and the models run without output_attentions)
"""
import json
import resource
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def batches(tok, path, batch, seq):
    rows = [json.loads(l) for l in open(path)]
    for i in range(0, len(rows) - batch + 1, batch):
        ids, masks = [], []
        for r in rows[i:i + batch]:
            prompt = tok.apply_chat_template(r["messages"][:1], tokenize=False, add_generation_prompt=True)
            full = tok.apply_chat_template(r["messages"], tokenize=False)
            p, f = tok(prompt, add_special_tokens=False)["input_ids"], tok(full, add_special_tokens=False)["input_ids"]
            ids.append(f[:seq])
            masks.append(([0] * len(p) + [1] * (len(f) - len(p)))[:seq])
        width = max(len(x) for x in ids)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        yield (torch.tensor([x + [pad] * (width - len(x)) for x in ids]),
               torch.tensor([m + [0] * (width - len(m)) for m in masks], dtype=torch.bool))


def uniform_pairs(student_layers, teacher_layers):
    return [(l, (l + 1) * teacher_layers // student_layers - 1) for l in range(student_layers)]


def kd_step(student, teacher, ids, mask, pairs, attn_weight, tau=1.0):
    labels = torch.where(mask, ids, torch.full_like(ids, -100))
    with torch.no_grad():
        t_out = teacher(ids, output_attentions=attn_weight > 0)
    s_out = student(ids, labels=labels, output_attentions=attn_weight > 0)  # s_out.loss: the logged ntp_loss
    sel = mask[:, 1:]  # logits at t predict token t + 1
    s = torch.log_softmax(s_out.logits[:, :-1][sel].float() / tau, -1)
    t = torch.softmax(t_out.logits[:, :-1][sel].float() / tau, -1)
    pred = torch.nn.KLDivLoss(reduction="batchmean")(s, t) * tau * tau
    if attn_weight == 0:
        return pred, s_out.loss
    rows = torch.zeros_like(mask)
    rows[:, :-1] = sel  # query rows = the positions whose next token is supervised
    causal = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).tril()
    attn = 0.0
    for sl, tl in pairs:
        a_s = s_out.attentions[sl].transpose(1, 2)[rows].float()  # (N, H, T)
        a_t = t_out.attentions[tl].transpose(1, 2)[rows].float()  # (N, H, T)
        keep = causal[rows.nonzero()[:, 1]].unsqueeze(1)           # (N, 1, T)
        term = torch.xlogy(a_t, a_t) - a_t * a_s.clamp_min(1e-12).log()
        attn = attn + torch.where(keep, term, torch.zeros_like(term)).sum() / (a_s.shape[0] * a_s.shape[1])
    attn = attn / len(pairs)
    return pred + attn_weight * attn, s_out.loss


def main():
    student_dir, teacher_dir, data, batch, steps, threads, seq = sys.argv[1:8]
    attn_weight = float(sys.argv[8]) if len(sys.argv) > 8 else 1.0
    torch.set_num_threads(int(threads))
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(student_dir)
    attention = "eager" if attn_weight > 0 else "sdpa"  # maps are only needed for the attention term
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32, attn_implementation=attention)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32, attn_implementation=attention).eval()
    student.train()
    pairs = uniform_pairs(student.config.num_hidden_layers, teacher.config.num_hidden_layers)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=0.0)
    rates = []
    for step, (ids, mask) in enumerate(batches(tok, data, int(batch), int(seq))):
        if step == int(steps):
            break
        start = time.perf_counter()
        loss, _ = kd_step(student, teacher, ids, mask, pairs, attn_weight)
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
