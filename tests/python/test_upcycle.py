"""kdae upcycle and the MoE router terms, against transformers.

- N identical experts (copies of a tiny random Mistral, no noise) load in transformers as Mixtral and give the
  base's logits within 1e-5 (fp32); donors' MLPs land in the right experts.
- Router init modes: random / embed / hidden differ, the same seed gives identical bytes, and embed / hidden equal
  the means computed here with tokenizers + transformers (hooks on post_attention_layernorm).
- Donors with another hidden size or tokenizer, bad prompts files and existing outputs fail clearly.
- load_balancing_loss equals transformers' load_balancing_loss_func (with and without a mask) within 1e-6, value
  and gradient; z-loss and router statistics equal formulas written here.
"""
import json
import os
import pathlib
import subprocess

import pytest
import torch
from safetensors.torch import load_file, save_file

from train_fixtures import write_tokenizer

KDAE = os.environ.get("KDAE_BIN", "kdae")
PROBE = os.path.join(os.environ.get("KDAE_BUILD", "build"), "tests", "router_loss_probe")
IDS = [5, 17, 3, 60, 42, 7, 7, 33, 11, 2, 55, 33, 70, 9]
PROMPTS = [{"expert": 0, "text": "def f(x): return x + 1"}, {"expert": 1, "text": "The cat sat on the mat."},
           {"expert": 0, "text": "for i in range(10): print(i)"}, {"expert": 1, "text": "Once upon a time, far away"},
           {"expert": 2, "text": "3 + 4 * (2 - 1) = 7"}]


def make_mistral(d: pathlib.Path, seed: int, hidden=64, tokenizer=write_tokenizer):
    from transformers import MistralConfig, MistralForCausalLM
    vocab = tokenizer(d)
    torch.manual_seed(seed)
    cfg = MistralConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, sliding_window=9,
                        attn_implementation="eager")
    model = MistralForCausalLM(cfg).eval()
    with torch.no_grad():  # norms start at 1; random values make the comparison sensitive to them
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(d)
    return model


def upcycle(*args, check=True):
    r = subprocess.run([KDAE, "upcycle", "--threads", "1", *map(str, args)], capture_output=True, text=True)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def write_prompts(path, rows=PROMPTS):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("base")
    return d, make_mistral(d, seed=1)


def test_identical_experts_equal_base(base, tmp_path):
    from transformers import AutoModelForCausalLM
    base_dir, base_model = base
    out = tmp_path / "moe"
    upcycle("--base", base_dir, "--num-experts", 4, "--top-k", 2, "--aux-loss-coef", 0.05, "--out", out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["MixtralForCausalLM"] and cfg["model_type"] == "mixtral"
    assert (cfg["num_local_experts"], cfg["num_experts_per_tok"]) == (4, 2)
    assert cfg["router_aux_loss_coef"] == 0.05 and cfg["sliding_window"] == 9
    assert (out / "tokenizer.json").read_bytes() == (base_dir / "tokenizer.json").read_bytes()
    moe = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert type(moe).__name__ == "MixtralForCausalLM"
    with torch.no_grad():
        got = moe(torch.tensor([IDS])).logits
        want = base_model(torch.tensor([IDS])).logits
    assert (got - want).abs().max().item() < 1e-5
    # kdae's own grouped-expert forward agrees too, and its router logits are the ones transformers computes.
    ours = {}
    for name, d in (("moe", out), ("base", base_dir)):
        f = tmp_path / f"{name}.safetensors"
        subprocess.run([KDAE, "forward", "--model", str(d), "--tokens", ",".join(map(str, IDS)), "--out", str(f),
                        "--threads", "1", "--router-logits"], check=True)
        ours[name] = load_file(str(f))
    assert (ours["moe"]["logits"] - ours["base"]["logits"]).abs().max().item() < 1e-5
    with torch.no_grad():
        router = moe(torch.tensor([IDS]), output_router_logits=True).router_logits[0]
    assert (ours["moe"]["router_logits.0"] - router.reshape(len(IDS), 4)).abs().max().item() < 1e-5
    # The router is real: its logits differ between experts, so top-2 mixing was exercised.
    gate = load_file(str(out / "model.safetensors"))["model.layers.0.block_sparse_moe.gate.weight"]
    assert gate.shape == (4, 64) and 0.01 < gate.std().item() < 0.03


def test_donor_mlps_become_experts(base, tmp_path):
    from transformers import AutoModelForCausalLM
    base_dir, _ = base
    donors = [tmp_path / f"donor{i}" for i in range(2)]
    for i, d in enumerate(donors):
        make_mistral(d, seed=10 + i)
    out = tmp_path / "moe"
    upcycle("--base", base_dir, "--experts", *donors, "--num-experts", 2, "--top-k", 1, "--out", out)
    got = load_file(str(out / "model.safetensors"))
    want_base = load_file(str(base_dir / "model.safetensors"))
    for name, t in want_base.items():
        if ".mlp." not in name:
            assert torch.equal(got[name], t), name
    for e, d in enumerate(donors):
        donor = load_file(str(d / "model.safetensors"))
        for l in range(2):
            for ours, dense in (("w1", "gate_proj"), ("w2", "down_proj"), ("w3", "up_proj")):
                key = f"model.layers.{l}.block_sparse_moe.experts.{e}.{ours}.weight"
                assert torch.equal(got[key], donor[f"model.layers.{l}.mlp.{dense}.weight"]), key
    assert not any(".mlp." in k for k in got)
    AutoModelForCausalLM.from_pretrained(out)  # loads without missing or unexpected weights


def gates(out):
    w = load_file(str(out / "model.safetensors"))
    return torch.stack([w[f"model.layers.{l}.block_sparse_moe.gate.weight"] for l in range(2)])  # (L, E, D)


def test_router_modes_differ_and_are_deterministic(base, tmp_path):
    from tokenizers import Tokenizer
    base_dir, base_model = base
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    outs = {}
    for mode in ("random", "embed", "hidden"):
        for run in (1, 2):
            extra = [] if mode == "random" else ["--prompts", prompts]
            out = tmp_path / f"{mode}{run}"
            upcycle("--base", base_dir, "--num-experts", 3, "--router", mode, *extra, "--seed", 7, "--out", out)
            outs[mode, run] = out
        assert (outs[mode, 1] / "model.safetensors").read_bytes() == (outs[mode, 2] / "model.safetensors").read_bytes()
    g = {mode: gates(outs[mode, 1]) for mode in ("random", "embed", "hidden")}
    assert not torch.allclose(g["random"], g["embed"]) and not torch.allclose(g["embed"], g["hidden"])
    other_seed = tmp_path / "seed8"
    upcycle("--base", base_dir, "--num-experts", 3, "--seed", 8, "--out", other_seed)
    assert not torch.equal(gates(other_seed), g["random"])

    tok = Tokenizer.from_file(str(base_dir / "tokenizer.json"))
    by_expert = [[tok.encode(p["text"]).ids for p in PROMPTS if p["expert"] == e] for e in range(3)]
    emb = base_model.model.embed_tokens.weight.detach()
    want_embed = torch.stack([emb[sum(ids, [])].mean(0) for ids in by_expert])
    want_embed = want_embed / want_embed.norm(dim=-1, keepdim=True)
    assert (g["embed"] - want_embed).abs().max().item() < 1e-6
    assert torch.equal(g["embed"][0], g["embed"][1])  # embed mode: one router for every layer

    captured = {}
    hooks = [layer.post_attention_layernorm.register_forward_hook(
        lambda mod, inp, out, l=l: captured.__setitem__(l, out[0])) for l, layer in enumerate(base_model.model.layers)]
    want_hidden = torch.zeros(2, 3, 64)
    with torch.no_grad():
        for e, prompt_ids in enumerate(by_expert):
            for ids in prompt_ids:
                base_model(torch.tensor([ids]))
                for l in range(2):
                    want_hidden[l, e] += captured[l].sum(0)
            want_hidden[:, e] /= sum(len(ids) for ids in prompt_ids)
    for h in hooks:
        h.remove()
    want_hidden = want_hidden / want_hidden.norm(dim=-1, keepdim=True)
    assert (g["hidden"] - want_hidden).abs().max().item() < 1e-5
    assert not torch.allclose(g["hidden"][0], g["hidden"][1])  # hidden mode: one router per layer


def test_noise_breaks_symmetry_deterministically(base, tmp_path):
    base_dir, _ = base
    outs = [tmp_path / f"noisy{i}" for i in range(2)]
    for out in outs:
        upcycle("--base", base_dir, "--num-experts", 2, "--noise", 0.01, "--seed", 3, "--out", out)
    assert (outs[0] / "model.safetensors").read_bytes() == (outs[1] / "model.safetensors").read_bytes()
    w = load_file(str(outs[0] / "model.safetensors"))
    dense = load_file(str(base_dir / "model.safetensors"))["model.layers.0.mlp.gate_proj.weight"]
    e0, e1 = (w[f"model.layers.0.block_sparse_moe.experts.{e}.w1.weight"] for e in range(2))
    assert not torch.equal(e0, e1)
    rel = (e0 - dense).std().item() / dense.std().item()
    assert 0.005 < rel < 0.02  # noise 0.01 relative to the tensor's std


def swapped_tokenizer(d):
    """Same vocabulary size, two ids exchanged: only the fingerprint can tell."""
    n = write_tokenizer(d)
    tok = json.loads((d / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]
    (d / "tokenizer.json").write_text(json.dumps(tok))
    return n


def test_bad_inputs_fail_clearly(base, tmp_path):
    base_dir, _ = base
    good = tmp_path / "good"
    make_mistral(good, seed=4)
    wide = tmp_path / "wide"
    make_mistral(wide, seed=5, hidden=48)
    r = upcycle("--base", base_dir, "--experts", good, wide, "--num-experts", 2, "--out", tmp_path / "o1", check=False)
    assert r.returncode == 1 and "hidden_size is 48" in r.stderr and str(wide) in r.stderr, r.stderr
    other_tok = tmp_path / "other_tok"
    make_mistral(other_tok, seed=6, tokenizer=swapped_tokenizer)
    r = upcycle("--base", base_dir, "--experts", good, other_tok, "--num-experts", 2, "--out", tmp_path / "o2",
                check=False)
    assert r.returncode == 1 and "tokenizer differs" in r.stderr and str(other_tok) in r.stderr, r.stderr
    r = upcycle("--base", base_dir, "--experts", good, "--num-experts", 2, "--out", tmp_path / "o3", check=False)
    assert r.returncode == 1 and "one donor per expert" in r.stderr, r.stderr
    bad = write_prompts(tmp_path / "bad.jsonl", [PROMPTS[0]])
    bad.write_text(bad.read_text() + '{"expert": 5, "text": "x"}\n')
    r = upcycle("--base", base_dir, "--num-experts", 2, "--router", "embed", "--prompts", bad, "--out",
                tmp_path / "o4", check=False)
    assert r.returncode == 1 and f"{bad}:2: expert 5 is outside [0, 2)" in r.stderr, r.stderr
    assert not any(p.name.startswith(("o1", "o2", "o3", "o4")) for p in tmp_path.iterdir())
    # An existing output is never replaced without --overwrite, and stays intact.
    out = tmp_path / "out"
    upcycle("--base", base_dir, "--num-experts", 2, "--out", out)
    before = (out / "model.safetensors").read_bytes()
    r = upcycle("--base", base_dir, "--num-experts", 2, "--seed", 1, "--out", out, check=False)
    assert r.returncode == 1 and "already exists" in r.stderr
    assert (out / "model.safetensors").read_bytes() == before
    upcycle("--base", base_dir, "--num-experts", 2, "--seed", 1, "--out", out, "--overwrite")
    assert (out / "model.safetensors").read_bytes() != before


def run_probe(tmp_path, logits, mask, E, K):
    tensors = {f"router_logits.{l}": x.contiguous() for l, x in enumerate(logits)}
    if mask is not None:
        tensors["token_mask"] = mask.reshape(-1).to(torch.int64)
    save_file(tensors, str(tmp_path / "in.safetensors"))
    subprocess.run([PROBE, str(tmp_path / "in.safetensors"), str(tmp_path / "out.safetensors"), str(E), str(K)],
                   check=True)
    return load_file(str(tmp_path / "out.safetensors"))


@pytest.mark.parametrize("E,K,masked", [(4, 2, False), (4, 2, True), (8, 2, True), (3, 1, False)])
def test_router_losses_match_transformers(tmp_path, E, K, masked):
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
    torch.manual_seed(E * 10 + K + masked)
    B, T, L = 2, 9, 3
    logits = [(torch.randn(B * T, E) * 2).requires_grad_(True) for _ in range(L)]
    mask = (torch.rand(B, T) > 0.3).to(torch.int64) if masked else None
    ours = run_probe(tmp_path, [x.detach() for x in logits], mask, E, K)

    ref = load_balancing_loss_func(tuple(logits), E, K, mask)
    grads = torch.autograd.grad(ref, logits)
    assert abs(ours["aux_loss"].item() - ref.item()) < 1e-6
    for l in range(L):
        assert (ours[f"aux_grad.{l}"] - grads[l]).abs().max().item() < 1e-6

    w = torch.ones(B * T) if mask is None else mask.reshape(-1).float()
    z_ref = sum((torch.logsumexp(x, -1) ** 2 * w).sum() / w.sum() for x in logits) / L
    z_grads = torch.autograd.grad(z_ref, logits)
    assert abs(ours["z_loss"].item() - z_ref.item()) < 1e-5
    for l in range(L):
        assert (ours[f"z_grad.{l}"] - z_grads[l]).abs().max().item() < 1e-6

    for l, x in enumerate(logits):
        p = torch.softmax(x.detach(), -1)
        counts = torch.zeros(E)
        for row in range(B * T):
            for e in p[row].topk(K).indices.tolist():
                counts[e] += w[row]
        load = counts / counts.sum()
        assert torch.allclose(ours[f"load.{l}"].float(), load, atol=1e-6)
        assert abs(ours["min_load"][l].item() - load.min().item()) < 1e-6
        ent = (-(p * p.log()).sum(-1) * w).sum() / w.sum()
        assert abs(ours["entropy"][l].item() - ent.item()) < 1e-5
