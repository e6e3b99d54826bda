"""A tiny 2-expert top-1 Mixtral student distilled from a tiny 4-expert top-2 Mixtral teacher: it learns
(held-out KL falls), the load-balancing loss keeps both experts in use (logged per layer), and the
logged router loss equals transformers' load_balancing_loss_func weighted by router_aux_loss_coef."""
import json

import pytest
import torch
from transformers import MixtralForCausalLM
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from test_distill import reference_terms, samples
from train_fixtures import make_moe_world, metrics, run, write_config

LOAD_FLOOR = 0.2  # stated floor: each of the 2 experts keeps at least 20% of the top-1 assignments


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_moe_world(tmp_path_factory.mktemp("moe-world"))


def load(path):
    return MixtralForCausalLM.from_pretrained(path, attn_implementation="eager", torch_dtype=torch.float32).eval()


def test_moe_student_learns_without_expert_collapse(world, tmp_path):
    cfg = write_config(tmp_path / "run.yaml", world, tmp_path / "out", max_steps=60, logging_steps=5)
    run("distill", "--config", cfg)
    logged = metrics(tmp_path / "out")
    for m in logged:
        assert m["moe/min_load"] >= LOAD_FLOOR, m
        assert m["moe/dropped_fraction"] == 0
        assert "moe/layer_1/entropy" in m
    before = reference_terms(load(world["student"]), load(world["teacher"]), samples(world["eval.jsonl"]), 1.0, [])[1]
    after = reference_terms(load(tmp_path / "out" / "model"), load(world["teacher"]), samples(world["eval.jsonl"]), 1.0, [])[1]
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
