"""Data-parallel training over c10d Gloo ranks on loopback (docs/distributed.md), launched through
the venv's real torchrun and by hand (srun-style environment): a 2-rank job equals one process with
the same global batch (losses, grad norms, eval figures and final weights within 1e-5) for distill
and align; resume crosses world sizes; a killed or hung rank stops the others within
dist_timeout_s; ranks started with different configs refuse to train."""
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from train_fixtures import KDAE, make_domain_world, metrics, run, write_config

TORCHRUN = pathlib.Path(sys.executable).parent / "torchrun"
# fp32 sums of a few hundred terms computed in another order (two half batches instead of one):
# ~ 1e-7 relative per step, compounding over 6 optimizer steps at lr 3e-3; 1e-5 leaves a wide margin
# and still catches any wrong share or double count (those are >= 1e-2).
TOL = 1e-5
COMPARED = ("train/loss", "train/ce_loss", "train/kd_loss", "train/attn_loss", "train/hidden_loss", "train/grad_norm",
            "train/supervised_tokens", "train/general/kd_loss", "train/domain/kd_loss", "eval/loss", "eval/ce_loss",
            "eval/kl", "eval/tokens", "eval/domain/kl", "eval/general/kl")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_domain_world(tmp_path_factory.mktemp("dist-world"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def torchrun(n, *args, check=True):
    cmd = [str(TORCHRUN), "--no-python", "--nproc-per-node", str(n), "--master-addr", "127.0.0.1", "--master-port",
           str(free_port()), KDAE, *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=rank_env(), timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def hand_launch(n, args_of_rank, port=None):
    """Ranks started as srun would: SLURM_* variables, rank 0 serves the store."""
    port = port or free_port()
    procs = []
    for r in range(n):
        env = rank_env(SLURM_PROCID=r, SLURM_NTASKS=n, SLURM_LOCALID=r, SLURM_NTASKS_PER_NODE=n,
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([KDAE, *map(str, args_of_rank(r))], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return procs


def by_step(out):
    return {m["step"]: m for m in metrics(out)}


def assert_same_run(one, many, steps=None):
    a, b = by_step(one), by_step(many)
    steps = steps or sorted(a)
    assert steps and set(steps) <= set(b), (sorted(a), sorted(b))
    compared = 0
    for step in steps:
        for key in COMPARED:
            if key in a[step] or key in b[step]:
                x, y = a[step][key], b[step][key]
                assert abs(x - y) <= TOL * max(1.0, abs(x)), f"step {step} {key}: one process {x}, ranks {y}"
                compared += 1
    assert compared >= 4 * len(steps)
    wa = load_file(str(pathlib.Path(one) / "model" / "model.safetensors"))
    wb = load_file(str(pathlib.Path(many) / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for name in wa:
        assert (wa[name] - wb[name]).abs().max().item() <= TOL, name


@pytest.fixture(scope="module")
def rank0_bytes():
    return {}


@pytest.mark.parametrize("sharding", ["none", "optimizer", "gradients"])
def test_two_torchrun_ranks_equal_one_process_distill(world, tmp_path, sharding, rank0_bytes):
    # Attention KD, a projected hidden-state loss (extra trainable tensors), accumulation and a
    # held-out evaluation every 3 steps: every quantity the ranks must reduce.
    common = dict(max_steps=6, gradient_accumulation_steps=2, attn_weight=1.0, hidden_weight=0.5,
                  eval_data_path=world["eval.jsonl"], eval_steps=3, eval_batch_size=5, sharding=sharding)
    one = write_config(tmp_path / "one.yaml", world, tmp_path / "one", train_batch_size=8, **common)
    two = write_config(tmp_path / "two.yaml", world, tmp_path / "two", train_batch_size=4, **common)
    run("distill", "--config", one)
    proc = torchrun(2, "distill", "--config", two)
    assert "global batch 16 = 4 per micro-batch x 2 accumulation x 2 ranks" in proc.stderr
    assert_same_run(tmp_path / "one", tmp_path / "two")
    logged = metrics(tmp_path / "two")
    assert len(logged) == 6 + 2  # rank 0 alone writes metrics.jsonl: 6 train lines + 2 eval lines
    assert logged[0]["dist/ranks"] == 2 and logged[0]["dist/allreduce_bytes_per_step"] > 0
    rank0_bytes[sharding] = (logged[0]["dist/optimizer_state_bytes"], logged[0]["dist/gradient_bytes"])
    if len(rank0_bytes) == 3:
        # Rank 0 keeps about half the moments (whole tensors) from ZeRO-1 on, and about half the
        # gradients after the step's reduction with ZeRO-2 only.
        (state, grads), (state1, grads1), (state2, grads2) = (rank0_bytes[m] for m in ("none", "optimizer", "gradients"))
        assert 0.3 < state1 / state < 0.7 and state2 == state1, rank0_bytes
        assert grads1 == grads and 0.3 < grads2 / grads < 0.7, rank0_bytes


def test_small_buckets_overlap_backward_and_change_nothing(world, tmp_path):
    one = write_config(tmp_path / "one.yaml", world, tmp_path / "one", train_batch_size=8, max_steps=4)
    two = write_config(tmp_path / "two.yaml", world, tmp_path / "two", train_batch_size=4, max_steps=4,
                       dist_bucket_mb=0.002)  # ~2 KB: one or two tensors per bucket
    run("distill", "--config", one)
    torchrun(2, "distill", "--config", two)
    assert_same_run(tmp_path / "one", tmp_path / "two")
    last = metrics(tmp_path / "two")[-1]
    # Bytes: the fp32 gradients plus one presence count per tensor, whatever the bucketing.
    params = sum(t.numel() for t in load_file(str(tmp_path / "one" / "model" / "model.safetensors")).values())
    assert last["dist/allreduce_bytes_per_step"] == 4 * (params + 12)  # the tiny student has 12 tensors
    # Buckets start during backward except those holding a tensor backward reaches last (the embeddings).
    assert last["dist/buckets_overlapped"] >= 0.5


@pytest.mark.parametrize("sharding", ["none", "optimizer", "gradients"])
def test_two_ranks_equal_one_process_align(world, tmp_path, sharding):
    def align(name, batch):
        cfg = write_config(tmp_path / f"{name}.yaml", world, tmp_path / name, target_model_path="",
                           domain_model_path=world["expert"], training_data_path=world["mixed.jsonl"],
                           domain_fraction=0.3, train_batch_size=batch, max_steps=6, sharding=sharding)
        cfg.write_text(cfg.read_text().replace('target_model_path: ""', f'target_model_path: {json.dumps(world["teacher"])}'))
        return cfg
    run("align", "--config", align("one", 8))
    procs = hand_launch(2, lambda r: ["align", "--config", align("two", 4)])
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    assert_same_run(tmp_path / "one", tmp_path / "two")
    assert "train/domain/kd_loss" in metrics(tmp_path / "two")[0]


def test_sharded_teachers_give_the_replicated_losses(world, tmp_path):
    # Attention KD drives the teacher layer by layer, a hidden-state loss reads its layers, and 11
    # rows per rank leave rank 1 an empty slice at the epoch's end (96 = 4 x 22 + 8) as does the
    # eval's last batch (24 = 2 x 10 + 4): rank 1 then runs the teacher on a stand-in so the layer
    # gathers stay in step.
    common = dict(max_steps=6, train_batch_size=11, attn_weight=1.0, hidden_weight=0.5, dist_timeout_s=60,
                  eval_data_path=world["eval.jsonl"], eval_steps=3, eval_batch_size=5)
    whole = write_config(tmp_path / "whole.yaml", world, tmp_path / "whole", **common)
    split = write_config(tmp_path / "split.yaml", world, tmp_path / "split", teacher_sharding="full", **common)
    torchrun(2, "distill", "--config", whole)
    proc = torchrun(2, "distill", "--config", split)
    assert "layers split over 2 ranks, gathered one at a time" in proc.stderr
    assert_same_run(tmp_path / "whole", tmp_path / "split")


def test_sharded_teachers_in_align_run_in_step(world, tmp_path):
    # Two sharded teachers; a rank whose rows are all general still runs the expert as a stand-in.
    def align(name, **extra):
        cfg = write_config(tmp_path / f"{name}.yaml", world, tmp_path / name, target_model_path="",
                           domain_model_path=world["expert"], training_data_path=world["mixed.jsonl"],
                           domain_fraction=0.3, train_batch_size=3, max_steps=6, attn_weight=1.0, dist_timeout_s=60, **extra)
        cfg.write_text(cfg.read_text().replace('target_model_path: ""', f'target_model_path: {json.dumps(world["teacher"])}'))
        return cfg
    torchrun(2, "align", "--config", align("whole"))
    torchrun(2, "align", "--config", align("split", teacher_sharding="full"))
    assert_same_run(tmp_path / "whole", tmp_path / "split")


def test_resume_on_another_world_size_continues_exactly(world, tmp_path):
    # global_batch_size keeps the config (and its hash) the same on 1 and 2 ranks; the 2-rank run
    # shards optimizer state and gradients, so its checkpoints hold one optimizer part per rank.
    cfg = write_config(tmp_path / "c.yaml", world, tmp_path / "ref", train_batch_size=4, global_batch_size=8,
                       max_steps=6, save_steps=3, sharding="gradients")
    torchrun(2, "distill", "--config", cfg)
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "ref", cut)
    shutil.rmtree(cut / "checkpoint-6")
    shutil.rmtree(cut / "model")
    proc = run("distill", "--config", cfg, "--set", f"output_dir={cut}", "--resume")
    assert "resuming from" in proc.stderr and "checkpoint-3" in proc.stderr
    assert_same_run(tmp_path / "ref", cut, steps=[4, 5, 6])
    # Each rank wrote its own part (nothing gathered, no part left outside a checkpoint); together
    # they are the state one process keeps whole.
    run("distill", "--config", cfg, "--set", f"output_dir={tmp_path / 'single'}")
    ckpt = tmp_path / "ref" / "checkpoint-3"
    assert not (ckpt / "optimizer.safetensors").exists()
    parts = [load_file(str(ckpt / f"optimizer-rank-{r}-of-2.safetensors")) for r in range(2)]
    assert parts[0] and parts[1] and not parts[0].keys() & parts[1].keys()
    assert not list((tmp_path / "ref").glob(".checkpoint-*"))
    sharded = {**parts[0], **parts[1]}
    whole = load_file(str(tmp_path / "single" / "checkpoint-3" / "optimizer.safetensors"))
    assert sharded.keys() == whole.keys() and len(whole) > 10
    for name in whole:
        assert (sharded[name] - whole[name]).abs().max().item() <= TOL * max(1.0, whole[name].abs().max().item()), name

    odd = run("distill", "--config", cfg, "--set", f"output_dir={tmp_path / 'odd'}", "--set", "global_batch_size=6",
              check=False)
    assert odd.returncode == 1 and "global_batch_size 6 is not a multiple of train_batch_size x ranks = 4 x 1" in odd.stderr


def test_killed_rank_stops_the_job_and_resume_reproduces_it(world, tmp_path):
    steps = 300
    cfg = write_config(tmp_path / "c.yaml", world, tmp_path / "run", train_batch_size=4, max_steps=steps,
                       save_steps=10, logging_steps=10, dist_timeout_s=30)
    procs = hand_launch(2, lambda r: ["distill", "--config", cfg])
    deadline = time.time() + 300
    while not (tmp_path / "run" / "checkpoint-20").exists():
        assert time.time() < deadline and procs[0].poll() is None, procs[0].stderr.read()[-3000:]
        time.sleep(0.01)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.time()
    _, err = procs[0].communicate(timeout=60)
    procs[1].wait()
    assert procs[0].returncode == 1, err[-3000:]
    assert time.time() - killed < 30
    assert "(rank 0/2): error: step" in err and "another rank stopped" in err, err[-2000:]
    assert not (tmp_path / "run" / "model").exists()
    for ckpt in (tmp_path / "run").glob("checkpoint-*"):
        assert (ckpt / "trainer_state.json").exists()  # only committed checkpoints carry the name

    torchrun(2, "distill", "--config", cfg, "--resume")
    reference = write_config(tmp_path / "r.yaml", world, tmp_path / "ref", train_batch_size=8, max_steps=steps,
                             logging_steps=10)
    run("distill", "--config", reference)
    assert_same_run(tmp_path / "ref", tmp_path / "run", steps=list(range(30, steps + 1, 10)))


def test_hung_rank_times_out(world, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", world, tmp_path / "run", train_batch_size=4, max_steps=100000,
                       save_steps=10, logging_steps=50, dist_timeout_s=3)
    procs = hand_launch(2, lambda r: ["distill", "--config", cfg])
    try:
        while not (tmp_path / "run" / "checkpoint-10").exists():
            assert procs[0].poll() is None, procs[0].stderr.read()[-3000:]
            time.sleep(0.01)
        procs[1].send_signal(signal.SIGSTOP)
        stopped = time.time()
        _, err = procs[0].communicate(timeout=60)
        assert procs[0].returncode == 1
        assert 2.5 < time.time() - stopped < 30
        assert "Timed out" in err or "timed out" in err, err[-2000:]
    finally:
        procs[1].kill()
        procs[1].wait()


def test_ranks_with_different_configs_refuse_to_start(world, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", world, tmp_path / "run", train_batch_size=4)
    procs = hand_launch(2, lambda r: ["distill", "--config", cfg, "--set", f"learning_rate={0.001 * (r + 1)}"])
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 1
        assert "the run config (config hash) differs between ranks" in err, err[-2000:]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_teacher_cache_splits_samples_over_ranks(world, tmp_path):
    # Small shards so each rank writes several; the merged cache must cover what the one-process cache
    # covers and train identically.
    cfg = write_config(tmp_path / "c.yaml", world, tmp_path / "run", teacher_cache=str(tmp_path / "two"), max_steps=4)
    common = ["teacher-cache", "--config", cfg, "--teacher", world["teacher"], "--top-k", 16, "--shard-mb", "0.02",
              "--threads", 1]
    run(*common, "--out", tmp_path / "one")
    proc = torchrun(2, *common, "--out", tmp_path / "two")
    assert "teacher cache" in proc.stdout  # rank 0 reports the merged cache
    inspect = run("teacher-cache", "inspect", tmp_path / "two").stdout
    assert "(complete)" in inspect, inspect
    assert not list((tmp_path / "two").glob(".rank-*")), "the parts were not merged"
    assert len(list((tmp_path / "two").glob("shard-*.kdtc"))) >= 2
    tokens = lambda text: [l.split()[2] for l in text.splitlines() if l.startswith("supervised tokens")]
    assert tokens(inspect) == tokens(run("teacher-cache", "inspect", tmp_path / "one").stdout)
    run("distill", "--config", cfg)
    ref = write_config(tmp_path / "r.yaml", world, tmp_path / "ref", teacher_cache=str(tmp_path / "one"), max_steps=4)
    run("distill", "--config", ref)
    assert_same_run(tmp_path / "ref", tmp_path / "run")
