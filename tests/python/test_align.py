"""kdae align (DAE): the logged loss equals the paper's DAE formula (two teachers routed by is_domain)
computed independently; a small experiment shows the student moves towards the domain expert on domain
data while staying close to the general teacher on general data, unlike plain KD from the expert; bad
domain setups fail clearly."""
import json
import pathlib
import shutil

import pytest
import torch

from test_distill import load, reference_terms, samples
from train_fixtures import make_domain_world, metrics, run, write_config


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_domain_world(tmp_path_factory.mktemp("domain-world"))


def align_config(path, world, out, **overrides):
    base = dict(target_model_path="", domain_model_path=world["expert"], training_data_path=world["mixed.jsonl"],
                domain_fraction=0.3, weight_decay=0.0)
    base.update(overrides)
    cfg = write_config(path, world, out, **base)
    text = cfg.read_text().replace('target_model_path: ""', f'target_model_path: {json.dumps(world["teacher"])}')
    cfg.write_text(text)
    return cfg


def split(path):
    rows = [json.loads(l) for l in pathlib.Path(path).read_text().splitlines()]
    return rows


def test_logged_loss_equals_dae_formula(world, tmp_path):
    """One step over every training sample, lambda 0.6, tau 1.5. domain_fraction = the file's own domain
    share of supervised tokens (48 of 144 equal-length answers), so the epoch holds each sample once."""
    rows = split(world["mixed.jsonl"])
    data_path = tmp_path / "data.jsonl"
    data_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = align_config(tmp_path / "run.yaml", world, tmp_path / "out", training_data_path=str(data_path),
                       max_steps=1, train_batch_size=len(rows), seq_length=128, lambda_param=0.6, temperature=1.5,
                       learning_rate=1e-6, domain_fraction=1 / 3)
    run("align", "--config", cfg)
    first = metrics(tmp_path / "out")[0]
    general = [r for r in rows if not r.get("domain")]
    domain = [r for r in rows if r.get("domain")]
    tmp_g, tmp_d = tmp_path / "g.jsonl", tmp_path / "d.jsonl"
    tmp_g.write_text("".join(json.dumps(r) + "\n" for r in general))
    tmp_d.write_text("".join(json.dumps(r) + "\n" for r in domain))
    student = load(world["student"])
    sg, sd = samples(tmp_g), samples(tmp_d)
    ng = sum(int(s[1:].sum()) for _, s in sg)
    nd = sum(int(s[1:].sum()) for _, s in sd)
    ce_g, kl_g, _ = reference_terms(student, load(world["teacher"]), sg, 1.5, [])
    ce_d, kl_d, _ = reference_terms(student, load(world["expert"]), sd, 1.5, [])
    ce = (ce_g * ng + ce_d * nd) / (ng + nd)
    kl = (kl_g * ng + kl_d * nd) / (ng + nd)
    assert first["train/supervised_tokens"] == ng + nd
    assert first["train/ce_loss"] == pytest.approx(ce, rel=1e-5)
    assert first["train/kd_loss"] == pytest.approx(kl, rel=1e-5)
    assert first["train/loss"] == pytest.approx(0.4 * ce + 0.6 * kl, rel=1e-5)
    assert first["train/domain/kd_loss"] == pytest.approx(kl_d, rel=1e-5)
    assert first["train/general/kd_loss"] == pytest.approx(kl_g, rel=1e-5)


def kl_to(model_dir, teacher_dir, data_path):
    return reference_terms(load(model_dir), load(teacher_dir), samples(data_path), 1.0, [])[1]


def test_dae_gains_the_domain_and_keeps_generality(world, tmp_path):
    stage1 = write_config(tmp_path / "kd.yaml", world, tmp_path / "kd", max_steps=60)
    run("distill", "--config", stage1)
    s1 = tmp_path / "kd" / "model"
    dae = align_config(tmp_path / "dae.yaml", world, tmp_path / "dae", base_model_path=str(s1), max_steps=40)
    proc = run("align", "--config", dae)
    assert "domain share of supervised tokens" in proc.stderr
    expert_only = write_config(tmp_path / "exp.yaml", world, tmp_path / "exp", base_model_path=str(s1),
                               target_model_path=world["expert"], training_data_path=world["mixed.jsonl"], max_steps=40)
    run("distill", "--config", expert_only)
    figures = {}
    for name, d in (("stage1", s1), ("dae", tmp_path / "dae" / "model"), ("expert-only", tmp_path / "exp" / "model")):
        figures[name] = (kl_to(d, world["expert"], world["domain-eval.jsonl"]), kl_to(d, world["teacher"], world["eval.jsonl"]))
    print("KL to expert on domain / KL to general on general:", figures)
    (s1_dom, s1_gen), (dae_dom, dae_gen), (_, exp_gen) = figures["stage1"], figures["dae"], figures["expert-only"]
    assert dae_dom < 0.8 * s1_dom            # the expert's domain knowledge came in
    assert dae_gen < 1.25 * s1_gen           # stated bound: general KL rises by at most 25%
    assert exp_gen > dae_gen                 # plain KD from the expert loses more generality


def test_bad_domain_setups_fail_clearly(world, tmp_path):
    rows = split(world["mixed.jsonl"])
    bad = tmp_path / "bad-flag.jsonl"
    bad.write_text("".join(json.dumps(dict(r, domain=2) if i == 3 else r) + "\n" for i, r in enumerate(rows)))
    proc = run("align", "--config", align_config(tmp_path / "a.yaml", world, tmp_path / "a", training_data_path=str(bad)),
               check=False)
    assert proc.returncode == 1 and "bad-flag.jsonl:4" in proc.stderr

    general_only = tmp_path / "general.jsonl"
    general_only.write_text("".join(json.dumps(r) + "\n" for r in rows if not r.get("domain")))
    proc = run("align", "--config", align_config(tmp_path / "b.yaml", world, tmp_path / "b",
                                                 training_data_path=str(general_only)), check=False)
    assert proc.returncode == 1 and "'domain' has no training sample" in proc.stderr

    proc = run("align", "--config", align_config(tmp_path / "c.yaml", world, tmp_path / "c", domain_fraction=1.5),
               check=False)
    assert proc.returncode == 1 and "domain_fraction" in proc.stderr

    other = tmp_path / "other-expert"
    shutil.copytree(world["expert"], other)
    cfg = json.loads((other / "tokenizer_config.json").read_text())
    cfg["eos_token"] = "<|endoftext|>"
    (other / "tokenizer_config.json").write_text(json.dumps(cfg))
    proc = run("align", "--config", align_config(tmp_path / "d.yaml", world, tmp_path / "d", domain_model_path=str(other)),
               check=False)
    assert proc.returncode == 1 and "different tokenizers" in proc.stderr


def test_per_domain_teacher_caches_match_the_live_teachers(world, tmp_path):
    """teachers: {general: {cache}, domain: {cache}}: each domain's rows read their own teacher's cache,
    built with --domain (only that domain's samples); a cache serving another domain is refused.
    At k = V (16-bit log-probs) the loss curve, the per-domain KD terms and CE equal the live run's up
    to the codec's quantization; a cache teacher with attention KD is refused."""
    common = dict(max_steps=4, learning_rate=1e-2, temperature=1.5)
    run("align", "--config", align_config(tmp_path / "live.yaml", world, tmp_path / "live", **common))
    live = metrics(tmp_path / "live")
    vocab = len(json.loads((pathlib.Path(world["teacher"]) / "tokenizer.json").read_text())["model"]["vocab"])
    caches = {}
    for name, teacher in (("general", world["teacher"]), ("domain", world["expert"])):
        # --domain: only that domain's samples run through the teacher and get rows.
        caches[name] = tmp_path / f"cache-{name}"
        cfg = align_config(tmp_path / f"capture-{name}.yaml", world, tmp_path / f"capture-{name}", **common)
        run("teacher-cache", "--config", cfg, "--teacher", teacher, "--top-k", vocab, "--logprob-bits", 16,
            "--domain", name, "--out", caches[name])
    assert "(domain domain only)" in run("teacher-cache", "inspect", caches["domain"]).stdout
    teachers = {name: {"cache": str(d)} for name, d in caches.items()}
    cfg = write_config(tmp_path / "cached.yaml", world, tmp_path / "cached", target_model_path="", teachers=teachers,
                       training_data_path=world["mixed.jsonl"], domain_fraction=0.3, **common)
    proc = run("align", "--config", cfg)
    assert "teacher cache domain = " in proc.stderr
    cached = metrics(tmp_path / "cached")
    assert len(cached) == len(live) == 4
    for a, b in zip(live, cached):
        for key in ("train/kd_loss", "train/ce_loss", "train/domain/kd_loss", "train/general/kd_loss"):
            assert b[key] == pytest.approx(a[key], rel=2e-3), (a["step"], key)
    cfg = write_config(tmp_path / "attn.yaml", world, tmp_path / "attn", target_model_path="", teachers=teachers,
                       training_data_path=world["mixed.jsonl"], domain_fraction=0.3, attn_weight=1.0, **common)
    refused = run("align", "--config", cfg, check=False)
    assert refused.returncode == 1 and "need the live teacher" in refused.stderr
    swapped = {"general": {"cache": str(caches["domain"])}, "domain": {"cache": str(caches["general"])}}
    cfg = write_config(tmp_path / "swap.yaml", world, tmp_path / "swap", target_model_path="", teachers=swapped,
                       training_data_path=world["mixed.jsonl"], domain_fraction=0.3, **common)
    refused = run("align", "--config", cfg, check=False)
    assert refused.returncode == 1 and "holds only the samples of domain 'general'" in refused.stderr
    assert "serves domain 'domain' here" in refused.stderr
