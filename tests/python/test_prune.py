"""kdae prune on a tiny 4-layer teacher: the importance it measures equals the KL of the model with
the layer removed, computed independently with transformers, greedy rounds remove the cheapest
layer, the pruned directory holds exactly the kept layers, and bad setups fail clearly."""
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from test_distill import samples
from train_fixtures import make_model, make_world, run

# KL sums over a 99-token vocabulary of log-ratios of float32 logits that kdae and transformers agree on
# to about 1e-5 (test_model_oracle): |delta KL| <= 2 x max |delta log p| ~ 4e-5; 1e-4 leaves room.
KL_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune")
    w = make_world(root)
    make_model(root / "deep", seed=11, hidden=64, layers=4, heads=4, kv_heads=2, sharpen=12.0)
    w["deep"] = str(root / "deep")
    return w


def without(model, removed):
    keep = [i for i in range(len(model.model.layers)) if i not in removed]
    pruned = LlamaForCausalLM(model.config.__class__(**{**model.config.to_dict(), "num_hidden_layers": len(keep)}))
    state = model.state_dict()
    for name, tensor in pruned.state_dict().items():
        if name.startswith("model.layers."):
            parts = name.split(".")
            parts[2] = str(keep[int(parts[2])])
            name = ".".join(parts)
        tensor.copy_(state[name])
    return pruned.eval()


def removal_kl(model, pruned, data):
    total, rows = 0.0, 0
    for ids, sup in data:
        pos = sup[1:].nonzero().squeeze(1)  # logits at pos predict token pos + 1
        with torch.no_grad():
            p = torch.log_softmax(model(ids[None]).logits[0, pos], -1)
            q = torch.log_softmax(pruned(ids[None]).logits[0, pos], -1)
        total += (p.exp() * (p - q)).sum().item()
        rows += len(pos)
    return total / rows


def test_importance_is_the_kl_of_removing_the_layer(world, tmp_path):
    out = tmp_path / "pruned"
    run("prune", "--model", world["deep"], "--data", world["train.jsonl"], "--template", "chatml", "--keep-layers", 2,
        "--calibration-samples", 6, "--out", out, "--threads", 1)
    record = json.loads((out / "prune.json").read_text())
    teacher = LlamaForCausalLM.from_pretrained(world["deep"]).eval()
    data = samples(world["train.jsonl"])[:6]
    removed = []
    for round_ in record["removed"]:
        kls = {l: removal_kl(teacher, without(teacher, removed + [l]), data) for l in range(4) if l not in removed}
        cheapest = min(kls, key=kls.get)
        assert round_["layer"] == cheapest, (round_, kls)
        assert abs(round_["kl"] - kls[cheapest]) < KL_TOLERANCE, (round_, kls)
        removed.append(cheapest)
    assert len(removed) == 2 and record["kept"] == sorted(set(range(4)) - set(removed))
    # The directory is the teacher with exactly those layers.
    expected = without(teacher, removed).state_dict()
    saved = load_file(str(out / "model.safetensors"))
    assert set(saved) == set(expected)
    for name, tensor in saved.items():
        assert torch.equal(tensor, expected[name]), name


def test_every_kth_layer_needs_no_data(world, tmp_path):
    out = tmp_path / "every"
    run("prune", "--model", world["deep"], "--prune", "every", "--keep-every", 2, "--out", out, "--threads", 1)
    assert json.loads((out / "prune.json").read_text())["kept"] == [0, 2, 3]
    assert LlamaForCausalLM.from_pretrained(out).config.num_hidden_layers == 3


def test_bad_setups_fail_clearly(world, tmp_path):
    proc = run("prune", "--model", world["deep"], "--out", tmp_path / "x", check=False)
    assert proc.returncode != 0 and "--data" in proc.stderr
    (tmp_path / "exists").mkdir()
    proc = run("prune", "--model", world["deep"], "--prune", "every", "--out", tmp_path / "exists", check=False)
    assert proc.returncode != 0 and "--overwrite" in proc.stderr
    proc = run("prune", "--model", world["deep"], "--data", world["train.jsonl"], "--template", "chatml",
               "--keep-layers", 9, "--out", tmp_path / "y", check=False)
    assert proc.returncode != 0 and "keep" in proc.stderr
