"""KD loss terms and student gradients from kdae (tests/tools/kd_loss_probe.cpp) against an
independent PyTorch implementation written the way the reference code does it: full-vocabulary
log_softmax/softmax, KLDivLoss, a masked mean, F.cross_entropy, and the attention KL as a plain
formula. The oracle runs in float64; kdae computes in float32, hence the 1e-5 tolerance."""
import json
import os
import subprocess
import tempfile

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

BUILD = os.environ.get("KDAE_BUILD", os.path.join(os.environ.get("KDAE_ROOT", "../.."), "build"))
PROBE = os.path.join(BUILD, "tests", "kd_loss_probe")
B, T, V, V_PAD = 3, 7, 50, 56  # the student head is padded to 56 columns, true vocabulary 50
TOL = dict(rtol=1e-5, atol=1e-5)


def make_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(B, T, V_PAD, generator=g) * 2.0
    teacher = torch.randn(B, T, V, generator=g) * 2.0
    tokens = torch.randint(0, V, (B, T), generator=g)
    # Answer spans (unshifted token_mask); labels[t] = tokens[t+1] where token t+1 is an answer token.
    token_mask = torch.zeros(B, T, dtype=torch.bool)
    token_mask[0, 3:7] = True
    token_mask[1, 2:5] = True   # followed by padding
    token_mask[2, 5:7] = True
    labels = torch.full((B, T), -100, dtype=torch.int64)
    labels[:, :-1] = torch.where(token_mask[:, 1:], tokens[:, 1:], torch.full_like(tokens[:, 1:], -100))
    return dict(student_logits=student, teacher_logits=teacher, labels=labels, token_mask=token_mask)


def causal_maps(g, heads, zeros_from=None):
    scores = torch.randn(B, heads, T, T, generator=g) * 3.0
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    a = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
    return a


def add_attention(inputs, seed=1):
    g = torch.Generator().manual_seed(seed)
    # layer 0: 4 teacher heads onto 2 student heads (averaged); layer 1: 2 teacher heads onto 4 (repeated)
    for layer, (hs, ht) in enumerate([(2, 4), (4, 2)]):
        s = causal_maps(g, hs)
        t = causal_maps(g, ht)
        t[:, :, :, 1] = 0.0                                   # exact teacher zeros
        t = t / t.sum(-1, keepdim=True)
        s[:, 0, 4, 2] = 0.0                                   # student underflow where the teacher is not 0
        inputs[f"student_attn_{layer}"] = s.contiguous()
        inputs[f"teacher_attn_{layer}"] = t.contiguous()
    return inputs


def run_probe(inputs, cfg, expect_ok=True):
    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "in.safetensors"), os.path.join(d, "out.safetensors")
        save_file({k: v.contiguous() for k, v in inputs.items()}, src)
        r = subprocess.run([PROBE, src, dst, json.dumps(cfg)], capture_output=True, text=True, timeout=120)
        if not expect_ok:
            assert r.returncode == 1, r.stdout + r.stderr
            return r.stderr
        assert r.returncode == 0, r.stderr
        return load_file(dst)


# ---------------------------------------------------------------- the independent oracle
def oracle_divergence(s, t, cfg):
    """Per-token divergence (B, T) at temperature tau, times tau^2; s, t float64 logits (true vocab)."""
    tau = cfg["tau"]
    log_ps, log_pt = F.log_softmax(s / tau, -1), F.log_softmax(t / tau, -1)
    ps, pt = log_ps.exp(), log_pt.exp()
    kl = torch.nn.KLDivLoss(reduction="none")  # kl(input=log q, target=p) = p (log p - log q)
    kind = cfg["divergence"]
    beta, alpha = cfg.get("beta", 0.5), cfg.get("alpha", 0.1)
    if kind == "jsd" and beta == 0.0:
        kind = "forward_kl"
    if kind == "jsd" and beta == 1.0:
        kind = "reverse_kl"
    if kind == "forward_kl":
        d = kl(log_ps, pt).sum(-1)
    elif kind == "reverse_kl":
        d = kl(log_pt, ps).sum(-1)
    elif kind == "jsd":
        m = beta * pt + (1 - beta) * ps
        d = beta * kl(m.log(), pt).sum(-1) + (1 - beta) * kl(m.log(), ps).sum(-1)
    elif kind == "skew_kl":
        d = kl((alpha * pt + (1 - alpha) * ps).log(), pt).sum(-1)
    elif kind == "tvd":
        d = 0.5 * (pt - ps).abs().sum(-1)
    return d * tau * tau


def oracle_attention(inputs, mask, floor=1e-12):
    total, rows = torch.zeros((), dtype=torch.float64), 0
    layer = 0
    while f"student_attn_{layer}" in inputs:
        s = inputs[f"student_attn_{layer}"].double()
        t = inputs[f"teacher_attn_{layer}"].double()
        hs, ht = s.shape[1], t.shape[1]
        if ht > hs:
            t = torch.stack([t[:, h * (ht // hs):(h + 1) * (ht // hs)].mean(1) for h in range(hs)], 1)
        elif hs > ht:
            t = torch.stack([t[:, h // (hs // ht)] for h in range(hs)], 1)
        for b in range(B):
            for i in range(T):
                if not mask[b, i]:
                    continue
                for h in range(hs):
                    for j in range(i + 1):
                        if t[b, h, i, j] > 0:
                            total = total + t[b, h, i, j] * (t[b, h, i, j].log() - s[b, h, i, j].clamp_min(floor).log())
                    rows += 1
        layer += 1
    return total / max(rows, 1), rows


def oracle(inputs, cfg):
    s = inputs["student_logits"].double().requires_grad_(True)
    t = inputs["teacher_logits"].double()
    labels = inputs["labels"]
    mask = labels.ne(-100) if cfg.get("alignment", "shifted") == "shifted" else inputs["token_mask"]
    per_token = oracle_divergence(s[..., :V], t[..., :V], cfg)
    if cfg.get("normalization", "token") == "token":
        w = inputs.get("sample_weights", torch.ones(B)).double()[:, None].expand(B, T)
        pred = (per_token * mask * w).sum() / max((mask * w).sum(), 1e-300) if mask.any() else per_token.sum() * 0
    else:
        w = inputs.get("sample_weights", torch.ones(B)).double()
        seq_means, weights = [], []
        for b in range(B):
            if mask[b].any():
                seq_means.append(per_token[b][mask[b]].mean())
                weights.append(w[b])
        pred = sum(m * wb for m, wb in zip(seq_means, weights)) / sum(weights)
    if labels.ne(-100).any():
        ce = F.cross_entropy(s.reshape(-1, V_PAD), labels.reshape(-1), ignore_index=-100)
    else:
        ce = s.sum() * 0
    attn, rows = oracle_attention(inputs, mask) if "student_attn_0" in inputs else (torch.zeros((), dtype=torch.float64), 0)
    lam = cfg["lambda"]
    total = (1 - lam) * ce + lam * (pred + cfg.get("attention_weight", 1.0) * attn)
    total.backward()
    return dict(total=total.item(), ce=ce.item(), pred=pred.item(), attn=attn.item(), grad=s.grad,
                counts=[int(mask.sum()), int(labels.ne(-100).sum()), rows * 0])


DIVERGENCES = [dict(divergence="forward_kl"), dict(divergence="reverse_kl"), dict(divergence="jsd", beta=0.5),
               dict(divergence="jsd", beta=0.2), dict(divergence="skew_kl", alpha=0.1), dict(divergence="tvd")]


def check(out, ref):
    for key in ("total", "ce", "pred", "attn"):
        assert out[key].item() == pytest.approx(ref[key], rel=1e-5, abs=1e-5), key
    torch.testing.assert_close(out["grad_student_logits"].double(), ref["grad"], **TOL)
    assert out["counts"][:2].tolist() == ref["counts"][:2]


@pytest.mark.parametrize("div", DIVERGENCES, ids=lambda d: d["divergence"] + str(d.get("beta", "")))
@pytest.mark.parametrize("alignment", ["shifted", "kd-dae"])
@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_terms_and_gradients_match_oracle(div, alignment, tau, lam):
    inputs = add_attention(make_inputs())
    cfg = dict(div, alignment=alignment, tau=tau, student_vocab=V, chunk_rows=3, **{"lambda": lam})
    out = run_probe(inputs, cfg)
    ref = oracle(inputs, cfg)
    check(out, ref)
    # the attention maps' gradients (through total) against the oracle's autograd
    if lam > 0:
        mask = inputs["labels"].ne(-100) if alignment == "shifted" else inputs["token_mask"]
        s0 = inputs["student_attn_0"].double().requires_grad_(True)
        s1 = inputs["student_attn_1"].double().requires_grad_(True)
        a, _ = oracle_attention(dict(inputs, student_attn_0=s0, student_attn_1=s1), mask)
        (lam * a).backward()
        torch.testing.assert_close(out["grad_student_attn_0"].double(), s0.grad, **TOL)
        torch.testing.assert_close(out["grad_student_attn_1"].double(), s1.grad, **TOL)


def test_kd_dae_alignment_differs_from_shifted():
    # The two masks really select different rows, so the alignment switch is exercised.
    inputs = make_inputs()
    assert not torch.equal(inputs["labels"].ne(-100), inputs["token_mask"])
    a = run_probe(inputs, dict(divergence="forward_kl", tau=1.0, student_vocab=V, alignment="shifted", **{"lambda": 1.0}))
    b = run_probe(inputs, dict(divergence="forward_kl", tau=1.0, student_vocab=V, alignment="kd-dae", **{"lambda": 1.0}))
    assert abs(a["pred"].item() - b["pred"].item()) > 1e-3


@pytest.mark.parametrize("weights", [None, [1.0, 3.0, 0.5]])
@pytest.mark.parametrize("normalization", ["token", "sequence"])
def test_normalization_and_sample_weights(normalization, weights):
    inputs = make_inputs(seed=3)
    if weights is not None:
        inputs["sample_weights"] = torch.tensor(weights)
    cfg = dict(divergence="forward_kl", tau=2.0, student_vocab=V, normalization=normalization, **{"lambda": 1.0})
    check(run_probe(inputs, cfg), oracle(inputs, cfg))


@pytest.mark.parametrize("div", DIVERGENCES, ids=lambda d: d["divergence"] + str(d.get("beta", "")))
def test_chunked_equals_unchunked(div):
    inputs = make_inputs(seed=5)
    base = dict(div, tau=2.0, student_vocab=V, **{"lambda": 0.5})
    plain = run_probe(inputs, dict(base, chunked=False))
    for rows in (1, 4, 1000):
        chunked = run_probe(inputs, dict(base, chunked=True, chunk_rows=rows))
        for key in ("total", "ce", "pred"):
            assert chunked[key].item() == pytest.approx(plain[key].item(), rel=1e-6, abs=1e-6)
        torch.testing.assert_close(chunked["grad_student_logits"], plain["grad_student_logits"], rtol=1e-6, atol=1e-6)


def test_empty_micro_batch_gives_zero_loss_and_gradient():
    inputs = add_attention(make_inputs())
    inputs["labels"].fill_(-100)
    inputs["token_mask"].fill_(False)
    for alignment in ("shifted", "kd-dae"):
        out = run_probe(inputs, dict(divergence="jsd", tau=2.0, student_vocab=V, alignment=alignment, **{"lambda": 0.5}))
        for key in ("total", "ce", "pred", "attn"):
            assert out[key].item() == 0.0, key
        assert out["counts"].tolist() == [0, 0, 0]
        assert torch.count_nonzero(out["grad_student_logits"]) == 0
        assert torch.count_nonzero(out["grad_student_attn_0"]) == 0


def test_padded_columns_get_no_distillation_gradient():
    inputs = make_inputs()
    out = run_probe(inputs, dict(divergence="forward_kl", tau=1.0, student_vocab=V, **{"lambda": 1.0}))
    assert torch.count_nonzero(out["grad_student_logits"][..., V:]) == 0
    assert torch.count_nonzero(out["grad_student_logits"][..., :V]) > 0


def test_vocab_mismatch_is_an_error_naming_both_sizes():
    inputs = make_inputs()
    inputs["teacher_logits"] = inputs["teacher_logits"][..., :48].contiguous()
    err = run_probe(inputs, dict(divergence="forward_kl", tau=1.0, **{"lambda": 1.0}), expect_ok=False)
    assert "48" in err and "56" in err and "vocab" in err
    err = run_probe(inputs, dict(divergence="forward_kl", tau=1.0, student_vocab=V, **{"lambda": 1.0}), expect_ok=False)
    assert "48" in err and "50" in err


def test_dae_routing_picks_the_teacher_per_sample():
    inputs = make_inputs(seed=7)
    g = torch.Generator().manual_seed(9)
    expert = torch.randn(B, T, V, generator=g) * 2
    reference = torch.randn(B, T, V, generator=g) * 2
    is_domain = torch.tensor([1, 0, 1])
    dae = dict(inputs)
    del dae["teacher_logits"]
    dae.update(is_domain=is_domain, expert_logits=expert[is_domain == 1].contiguous(),
               reference_logits=reference[is_domain == 0].contiguous())
    cfg = dict(divergence="forward_kl", tau=2.0, student_vocab=V, attention_weight=0.0, **{"lambda": 0.5})
    routed = torch.where(is_domain[:, None, None] == 1, expert, reference)
    check(run_probe(dae, cfg), oracle(dict(inputs, teacher_logits=routed), cfg))
    dae["is_domain"] = torch.tensor([1, 2, 0])
    err = run_probe(dae, cfg, expect_ok=False)
    assert "is_domain of sample 1 is 2" in err
