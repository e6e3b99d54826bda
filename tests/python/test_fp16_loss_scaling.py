"""float16 training uses dynamic loss scaling (torch.amp.GradScaler's rule): a step whose scaled
gradients overflow is skipped, not applied, and the scale halves; clean steps train as usual."""
import pathlib

import pytest
import torch
from safetensors.torch import load_file

from train_fixtures import make_world, metrics, run, write_config


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), n_train=32, n_eval=8)


def test_overflowing_steps_are_skipped_and_the_scale_halves(world, tmp_path):
    # 2^100 times any gradient overflows fp16 (max 65504): every step overflows and is skipped.
    out = tmp_path / "out"
    run("distill", "--config", write_config(tmp_path / "run.yaml", world, out, dtype="float16", max_steps=3,
                                            loss_scale_init=2.0 ** 100))
    logged = metrics(out)
    assert [m["train/skipped_steps"] for m in logged] == [1, 2, 3]
    assert [m["train/loss_scale"] for m in logged] == [2.0 ** 99, 2.0 ** 98, 2.0 ** 97]
    base = load_file(str(pathlib.Path(world["student"]) / "model.safetensors"))
    tuned = load_file(str(out / "model" / "model.safetensors"))
    for k in base:  # no skipped step touched a weight (the model is saved in the run's dtype)
        assert tuned[k].dtype == torch.float16 and torch.equal(base[k].half(), tuned[k]), k


def test_clean_fp16_steps_train_and_the_scale_grows(world, tmp_path):
    out = tmp_path / "out"
    run("distill", "--config", write_config(tmp_path / "run.yaml", world, out, dtype="float16", max_steps=8,
                                            loss_scale_growth_interval=3))
    logged = metrics(out)
    assert [m["train/skipped_steps"] for m in logged] == [0] * 8
    # Doubles after every 3 clean steps: 2^16 for steps 1-2, 2^17 after step 3, 2^18 after step 6.
    assert [m["train/loss_scale"] for m in logged] == [2.0 ** 16] * 2 + [2.0 ** 17] * 3 + [2.0 ** 18] * 3
    losses = [m["train/loss"] for m in logged]
    assert losses[-1] < losses[0]
    # The same run in float32 follows nearly the same curve: fp16 rounding, not a different objective.
    ref = tmp_path / "fp32"
    run("distill", "--config", write_config(tmp_path / "ref.yaml", world, ref, max_steps=8))
    for a, b in zip(logged, metrics(ref)):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=2e-2)


def test_a_resumed_fp16_run_continues_with_the_saved_scale(world, tmp_path):
    # Growth every 3 clean steps: the scale doubles after step 3, so a resume from step 2 that restarted at
    # 2^16 with a fresh count would log 2^16 at steps 3-4 instead of 2^16, 2^17.
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "run.yaml", world, out, dtype="float16", max_steps=4, save_steps=2,
                       loss_scale_growth_interval=3)
    run("distill", "--config", cfg)
    first = metrics(out)
    run("distill", "--config", cfg, "--set", f"resume_from_checkpoint={out / 'checkpoint-2'}", "--set", "overwrite=true")
    resumed = metrics(out)
    assert [m["train/loss_scale"] for m in first] == [2.0 ** 16] * 2 + [2.0 ** 17] * 2
    assert [m["train/loss_scale"] for m in resumed] == [m["train/loss_scale"] for m in first]
    for a, b in zip(first, resumed, strict=True):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-6)
