"""A tiny 2-expert top-1 Mixtral student distilled from a tiny 4-expert top-2 Mixtral teacher: it learns
(held-out KL falls), the load-balancing loss keeps both experts in use (logged per layer), and the
logged router loss equals transformers' load_balancing_loss_func weighted by router_aux_loss_coef."""
import json
import pathlib

import pytest
import torch
from transformers import MixtralForCausalLM
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from test_distill import reference_terms, samples
from train_fixtures import make_moe_world, metrics, run, write_config

LOAD_FLOOR = 0.2  # stated floor: over the second half of training each of the 2 experts keeps >= 20% of tokens


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_moe_world(tmp_path_factory.mktemp("moe-world"))


def load(path):
    return MixtralForCausalLM.from_pretrained(path, attn_implementation="eager", torch_dtype=torch.float32).eval()


def late_min_loads(out):
    logged = metrics(out)
    for m in logged:
        assert m["moe/dropped_fraction"] == 0
        assert 0 <= m["moe/layer_1/min_load"] <= 0.5 and m["moe/layer_1/entropy"] >= 0
    return logged, [m["moe/min_load"] for m in logged[len(logged) // 2:]]


def test_moe_student_learns_without_expert_collapse(world, tmp_path):
    """The random router starts collapsed (one expert takes nearly every token); with the
    load-balancing loss both experts stay in use, clearly more evenly than without it."""
    for name, coef in (("aux", 0.1), ("none", 0.0)):
        run("distill", "--config", write_config(tmp_path / f"{name}.yaml", world, tmp_path / name, max_steps=60,
                                                logging_steps=5, router_aux_loss_coef=coef))
    logged, with_aux = late_min_loads(tmp_path / "aux")
    _, without = late_min_loads(tmp_path / "none")
    print(f"min expert load, second half: aux {with_aux} / no aux {without}")
    assert min(with_aux) >= LOAD_FLOOR
    assert sum(with_aux) / len(with_aux) > sum(without) / len(without) + 0.1
    before = reference_terms(load(world["student"]), load(world["teacher"]), samples(world["eval.jsonl"]), 1.0, [])[1]
    after = reference_terms(load(tmp_path / "aux" / "model"), load(world["teacher"]), samples(world["eval.jsonl"]), 1.0, [])[1]
    print(f"held-out KL before {before:.4f} after {after:.4f}; min loads {[m['moe/min_load'] for m in logged]}")
    assert after < 0.7 * before


def test_router_loss_equals_transformers(world, tmp_path):
    data = samples(world["train.jsonl"])
    cfg = write_config(tmp_path / "run.yaml", world, tmp_path / "out", max_steps=1, train_batch_size=len(data),
                       seq_length=128, learning_rate=1e-6, router_aux_loss_coef=0.5)
    run("distill", "--config", cfg)
    first = metrics(tmp_path / "out")[0]
    student = load(world["student"])
    # One padded batch as kdae builds it; padding rows are excluded through the attention mask.
    width = max(len(ids) for ids, _ in data)
    ids = torch.zeros(len(data), width, dtype=torch.long)
    mask = torch.zeros(len(data), width, dtype=torch.long)
    for i, (x, _) in enumerate(data):
        ids[i, : len(x)], mask[i, : len(x)] = x, 1
    with torch.no_grad():
        out = student(ids, attention_mask=mask, output_router_logits=True)
    expected = load_balancing_loss_func(out.router_logits, 2, 1, mask).item()
    assert first["train/router_loss"] == pytest.approx(0.5 * expected, rel=1e-5)


def saved_tensors(model_dir):
    from safetensors.torch import load_file
    out = {}
    for f in sorted(pathlib.Path(model_dir).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


@pytest.mark.parametrize("frozen", ["routers", "experts"])
def test_frozen_moe_parts_stay_bit_identical(world, tmp_path, frozen):
    cfg = write_config(tmp_path / "run.yaml", world, tmp_path / "out", max_steps=3, router_aux_loss_coef=0.1,
                       **{f"freeze_{frozen}": True})
    run("distill", "--config", cfg)
    before, after = saved_tensors(world["student"]), saved_tensors(tmp_path / "out" / "model")
    assert set(before) == set(after)
    routers = [n for n in before if ".gate.weight" in n and "experts" not in n]
    experts = [n for n in before if ".experts." in n]
    assert routers and experts
    still, moved = (routers, experts) if frozen == "routers" else (experts, routers)
    for name in still:
        assert torch.equal(before[name], after[name]), name
    # An expert no token was routed to gets no gradient, so only some trained tensors need to move.
    assert any(not torch.equal(before[name], after[name]) for name in moved)


@pytest.mark.parametrize("frozen", ["routers", "experts"])
def test_frozen_tensors_stay_bit_identical(world, tmp_path, frozen):
    """freeze_routers / freeze_experts: after training steps the frozen tensors equal the student's
    starting weights bit for bit, and every other tensor has moved."""
    from safetensors.torch import load_file
    out = tmp_path / "run"
    run("distill", "--config", write_config(tmp_path / "c.yaml", world, out, max_steps=3,
                                            **{f"freeze_{frozen}": True}))
    before = load_file(str(pathlib.Path(world["student"]) / "model.safetensors"))
    after = load_file(str(out / "model" / "model.safetensors"))
    assert before.keys() == after.keys()
    is_frozen = (lambda n: n.endswith("block_sparse_moe.gate.weight")) if frozen == "routers" else \
        (lambda n: ".block_sparse_moe.experts." in n)
    names = sorted(before)
    assert any(is_frozen(n) for n in names)
    for name in names:
        if is_frozen(name):
            assert torch.equal(before[name], after[name]), name
        else:
            assert not torch.equal(before[name], after[name]), name
