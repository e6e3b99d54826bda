"""LoRA adapters in PEFT's layout: a kdae LoRA run writes adapter directories that peft loads onto the
transformers base model with the same logits as kdae's own (unmerged) LoRA forward; `kdae lora merge`
reproduces the merged model distill writes; a run can start from saved adapters; Mixtral-style
students get their own default targets; bad adapter directories fail clearly."""
import json
import pathlib
import shutil

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from train_fixtures import KDAE, make_moe_world, make_world, metrics, run, write_config

IDS = [1, 17, 40, 52, 9, 33, 61, 2, 70, 45, 12, 5]
LORA = dict(use_peft=True, peft_lora_r=4, peft_lora_alpha=8, peft_lora_dropout=0.15, learning_rate=1e-2,
            max_steps=4, save_steps=2)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), n_train=32, n_eval=8)


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    run("distill", "--config", write_config(out.parent / "run.yaml", world, out, **LORA))
    return out


def kdae_logits(model_dir, out_file, *flags):
    run("forward", "--model", model_dir, "--tokens", ",".join(map(str, IDS)), "--out", out_file, "--threads", "1", *flags)
    return load_file(str(out_file))["logits"].double()


def test_adapters_are_written_in_peft_layout(world, trained):
    for d in (trained / "adapters", trained / "checkpoint-2" / "adapters", trained / "checkpoint-4" / "adapters"):
        config = json.loads((d / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
        assert sorted(config["target_modules"]) == sorted(
            ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
        names = load_file(str(d / "adapter_model.safetensors"))
        # 7 projections x 1 layer x (A, B), PEFT's names
        assert len(names) == 14
        assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in names
    # The final adapters are the last checkpoint's.
    a = load_file(str(trained / "adapters" / "adapter_model.safetensors"))
    b = load_file(str(trained / "checkpoint-4" / "adapters" / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], load_file(str(trained / "checkpoint-2" / "adapters" / "adapter_model.safetensors"))[k])
               for k in a)


def test_peft_loads_our_adapters_with_our_logits(world, trained, tmp_path):
    base = LlamaForCausalLM.from_pretrained(world["student"], attn_implementation="eager", torch_dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(trained / "adapters")).eval()
    with torch.no_grad():
        theirs = model(torch.tensor([IDS])).logits[0].double()
    ours = kdae_logits(world["student"], tmp_path / "lora.safetensors", "--adapters", trained / "adapters")
    # fp32 forward of a 1-layer model: logits ~10, rounding ~ a few ulp of the (D = 32)-long dot products.
    assert (ours - theirs).abs().max().item() < 1e-4
    # The adapters matter: the base model alone is far off.
    plain = kdae_logits(world["student"], tmp_path / "base.safetensors")
    assert (plain - theirs).abs().max().item() > 1e-2


def test_lora_merge_equals_the_model_distill_writes(world, trained, tmp_path):
    merged = tmp_path / "merged"
    run("lora", "merge", "--base", world["student"], "--adapters", trained / "adapters", "--out", merged)
    ours, distilled = load_file(str(merged / "model.safetensors")), load_file(str(trained / "model" / "model.safetensors"))
    assert set(ours) == set(distilled)
    for k in ours:
        assert torch.equal(ours[k], distilled[k]), k
    assert (merged / "tokenizer.json").exists()
    # Refuses to replace an output unless told.
    again = run("lora", "merge", "--base", world["student"], "--adapters", trained / "adapters", "--out", merged,
                check=False)
    assert again.returncode != 0 and str(merged) in again.stderr


def test_a_run_starts_from_saved_adapters(world, trained, tmp_path):
    # One step at lr 1e-30 (below float32 resolution of the adapter entries) from the adapters: they come back unchanged.
    out = tmp_path / "out"
    run("distill", "--config", write_config(tmp_path / "run.yaml", world, out, **dict(LORA, learning_rate=1e-30, max_steps=1,
                                                                                       save_steps=0),
                                            peft_init_adapters=str(trained / "adapters")))
    a = load_file(str(out / "adapters" / "adapter_model.safetensors"))
    b = load_file(str(trained / "adapters" / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)
    bad = run("distill", "--config", write_config(tmp_path / "bad.yaml", world, tmp_path / "bad", **dict(LORA, peft_lora_r=8),
                                                  peft_init_adapters=str(trained / "adapters")), check=False)
    assert bad.returncode != 0 and "peft_lora_r 8" in bad.stderr and "has r 4" in bad.stderr


def test_moe_student_gets_expert_targets_by_default(tmp_path):
    w = make_moe_world(tmp_path / "moe", n_train=16, n_eval=8)
    out = tmp_path / "out"
    run("distill", "--config", write_config(tmp_path / "run.yaml", w, out, **dict(LORA, max_steps=1, save_steps=0)))
    config = json.loads((out / "adapters" / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "w1", "w2", "w3"])
    names = load_file(str(out / "adapters" / "adapter_model.safetensors"))
    assert any(".block_sparse_moe.experts.0.w1.lora_A" in k for k in names)
    assert not any("block_sparse_moe.gate." in k for k in names)


def test_bad_adapter_directories_fail_clearly(world, trained, tmp_path):
    def merge(adapters):
        return run("lora", "merge", "--base", world["student"], "--adapters", adapters, "--out", tmp_path / "m", check=False)

    missing = merge(tmp_path / "nowhere")
    assert missing.returncode != 0 and "adapter_config.json" in missing.stderr
    dora = tmp_path / "dora"
    shutil.copytree(trained / "adapters", dora)
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps(dict(config, use_dora=True)))
    proc = merge(dora)
    assert proc.returncode != 0 and "use_dora" in proc.stderr and "adapter_config.json" in proc.stderr
    wrong = tmp_path / "wrong-targets"
    shutil.copytree(trained / "adapters", wrong)
    (wrong / "adapter_config.json").write_text(json.dumps(dict(config, target_modules=["q_proj", "nope"])))
    proc = merge(wrong)
    assert proc.returncode != 0 and "'nope'" in proc.stderr
    assert not (tmp_path / "m").exists()


def test_frozen_base_is_held_in_the_compute_dtype(world, tmp_path):
    # Under dtype bfloat16 the frozen base is kept in bf16 (no fp32 master copy), the adapters in fp32:
    # the untouched tensors come out as the base rounded to bf16, and training still lowers the loss.
    out = tmp_path / "out"
    run("distill", "--config", write_config(tmp_path / "run.yaml", world, out, **dict(LORA, save_steps=0, max_steps=10,
                                                                                       peft_lora_dropout=0.0),
                                            dtype="bfloat16"))
    base = load_file(str(pathlib.Path(world["student"]) / "model.safetensors"))
    tuned = load_file(str(out / "model" / "model.safetensors"))
    for k in ("model.embed_tokens.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight"):
        assert torch.equal(tuned[k].float(), base[k].to(torch.bfloat16).float()), k
    assert not torch.equal(base["model.embed_tokens.weight"], base["model.embed_tokens.weight"].to(torch.bfloat16).float())
    adapters = load_file(str(out / "adapters" / "adapter_model.safetensors"))
    assert all(t.dtype == torch.float32 for t in adapters.values())
    losses = [m["train/loss"] for m in metrics(out)]
    assert losses[-1] < losses[0]
