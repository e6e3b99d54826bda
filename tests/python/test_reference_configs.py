"""Drop-in for users of the paper's reference code (kd-dae): its run_kd.yml and run_dae.yml (key set and values
in tests/assets/kd-dae) run unchanged with only their empty paths set; reference-shaped DAE lines
({"text": "<s>[INST] ... [/INST] ...</s>", "is_domain": 1}) route to the expert exactly as "domain" does;
disagreeing or bad flags are errors naming the line; unknown fields are reported once per file."""
import json
import os
import pathlib
import pickle

import pytest

from train_fixtures import make_domain_world, metrics, mistral_text_rows, run, write_config

ASSETS = pathlib.Path(os.environ.get("KDAE_ROOT", pathlib.Path(__file__).parents[2])) / "tests" / "assets" / "kd-dae"
WITHOUT_EFFECT = "experiment_name, load_in_8bit, load_in_4bit, local_rank, description, deepspeed"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_domain_world(tmp_path_factory.mktemp("domain-world"))


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    # The reference configs leave data_cache_dir at its default ($KDAE_HOME/datasets): keep it per test.
    monkeypatch.setenv("KDAE_HOME", str(tmp_path / "kdae-home"))


def reference_lines(rows, flag=None):
    return mistral_text_rows(rows, flag)


def write_lines(path, lines):
    path.write_text("".join(json.dumps(l) + "\n" for l in lines))
    return path


def rows_of(path):
    return [json.loads(l) for l in pathlib.Path(path).read_text().splitlines()]


def write_pickle(path, items, protocol=pickle.DEFAULT_PROTOCOL):
    path.write_bytes(pickle.dumps(items, protocol=protocol))
    return path


def test_reference_kd_config_runs_with_only_paths_set(world, tmp_path):
    # The reference's KD data file as it is: a pickled list of strings.
    texts = [l["text"] for l in reference_lines(rows_of(world["train.jsonl"])[:16])]
    data = write_pickle(tmp_path / "kd.pkl", texts)
    out = tmp_path / "kd"
    proc = run("distill", "--config", ASSETS / "run_kd.yml", "--set", f"base_model_path={world['student']}",
               "--set", f"target_model_path={world['teacher']}", "--set", f"training_data_path={data}",
               "--set", f"output_dir={out}")
    assert proc.stderr.count("kd-dae keys without effect") == 1
    assert f"run_kd.yml: kd-dae keys without effect in kdae, ignored: {WITHOUT_EFFECT}" in proc.stderr
    logged = metrics(out)
    # 16 samples = 2 micro-batches of 8 per epoch, so one optimizer step per epoch; num_train_epochs 2.
    assert [m["step"] for m in logged] == [1, 2]
    for m in logged:  # the reference's objective: logit KL plus attention KL, lambda 1
        assert m["train/kd_loss"] > 0 and m["train/attn_loss"] > 0
        assert m["train/loss"] == pytest.approx(m["train/kd_loss"] + m["train/attn_loss"], rel=1e-5)
    # warmup_ratio 0.1 of 2 steps takes effect: one warmup step at lr 0 (transformers' schedule), then the peak.
    assert [m["train/lr"] for m in logged] == pytest.approx([0.0, 2e-5])
    assert (out / "model" / "model.safetensors").exists()
    # run_kd.yml sets gradient_checkpointing with attention KD: it takes effect and changes no figure.
    assert "gradient_checkpointing" not in proc.stderr
    plain = tmp_path / "kd-plain"
    run("distill", "--config", ASSETS / "run_kd.yml", "--set", f"base_model_path={world['student']}",
        "--set", f"target_model_path={world['teacher']}", "--set", f"training_data_path={data}",
        "--set", f"output_dir={plain}", "--set", "gradient_checkpointing=false")
    for a, b in zip(logged, metrics(plain), strict=True):
        for key in ("train/loss", "train/kd_loss", "train/attn_loss", "train/grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key


def test_reference_dae_config_runs_with_only_paths_set(world, tmp_path):
    rows = rows_of(world["mixed.jsonl"])[:48]
    # The reference's DAE data file as it is: a pickled list of (text, is_domain) pairs.
    pairs = [(l["text"], l["is_domain"]) for l in reference_lines(rows, flag=lambda r: r.get("domain", 0))]
    data = write_pickle(tmp_path / "dae.pkl", pairs)
    out = tmp_path / "dae"
    proc = run("align", "--config", ASSETS / "run_dae.yml", "--set", f"base_model_path={world['student']}",
               "--set", f"target_model_path={world['teacher']}", "--set", f"domain_model_path={world['expert']}",
               "--set", f"training_data_path={data}", "--set", f"output_dir={out}")
    assert f"run_dae.yml: kd-dae keys without effect in kdae, ignored: {WITHOUT_EFFECT}" in proc.stderr
    logged = metrics(out)
    assert len(logged) == 2
    for m in logged:
        assert m["train/domain/kd_loss"] > 0 and m["train/general/kd_loss"] > 0
    assert (out / "model" / "model.safetensors").exists()


def test_is_domain_routes_like_domain(world, tmp_path):
    """Reference-shaped lines with is_domain give the run that the same lines with "domain" give (whose
    routing test_align.py checks against the DAE formula): same per-domain losses at every step."""
    rows = rows_of(world["mixed.jsonl"])
    flag = lambda r: r.get("domain", 0)  # noqa: E731
    with_is_domain = write_lines(tmp_path / "is_domain.jsonl", reference_lines(rows, flag))
    with_domain = write_lines(tmp_path / "domain.jsonl",
                              [{"text": l["text"], "domain": l["is_domain"]} for l in reference_lines(rows, flag)])
    inspect = run("data", "inspect", "--data", with_is_domain, "--tokenizer", world["student"]).stdout
    n_domain = sum(1 for r in rows if r.get("domain"))
    assert f"domains     general {len(rows) - n_domain}, domain {n_domain}" in inspect
    logs = []
    for name, path in (("is_domain", with_is_domain), ("domain", with_domain)):
        cfg = write_config(tmp_path / f"{name}.yaml", world, tmp_path / name, target_model_path=world["teacher"],
                           domain_model_path=world["expert"], training_data_path=str(path), domain_fraction=0.3,
                           max_steps=3, seq_length=128)
        run("align", "--config", cfg)
        logs.append(metrics(tmp_path / name))
    assert len(logs[0]) == 3
    for a, b in zip(*logs):
        for key in ("train/loss", "train/domain/kd_loss", "train/general/kd_loss", "train/supervised_tokens"):
            assert a[key] == b[key], key
    # The expert's rows are scored by the expert: a run whose "expert" is the general teacher logs another value.
    cfg = write_config(tmp_path / "same.yaml", world, tmp_path / "same", target_model_path=world["teacher"],
                       domain_model_path=world["teacher"], training_data_path=str(with_is_domain),
                       domain_fraction=0.3, max_steps=1, seq_length=128)
    run("align", "--config", cfg)
    assert metrics(tmp_path / "same")[0]["train/domain/kd_loss"] != pytest.approx(logs[0][0]["train/domain/kd_loss"], rel=1e-3)


def test_bad_flags_fail_naming_the_line(world, tmp_path):
    lines = reference_lines(rows_of(world["train.jsonl"])[:4], flag=lambda r: 0)
    cases = {"disagree": dict(lines[2], domain=1), "two": dict(lines[2], is_domain=2),
             "name": dict(lines[2], is_domain="shop")}
    for name, bad in cases.items():
        path = write_lines(tmp_path / f"{name}.jsonl", lines[:2] + [bad] + lines[3:])
        proc = run("data", "inspect", "--data", path, "--tokenizer", world["student"], check=False)
        assert proc.returncode == 1 and f"{name}.jsonl:3" in proc.stderr, proc.stderr
        assert "is_domain" in proc.stderr
    agree = write_lines(tmp_path / "agree.jsonl", [dict(l, domain=True) if i == 1 else l for i, l in enumerate(
        reference_lines(rows_of(world["train.jsonl"])[:4], flag=lambda r: 1))])
    assert "domains     general 0, domain 4" in run("data", "inspect", "--data", agree, "--tokenizer", world["student"]).stdout


def test_unknown_fields_are_reported_once_per_file(world, tmp_path):
    lines = reference_lines(rows_of(world["train.jsonl"])[:16], flag=lambda r: 0)
    lines = [dict(l, is_domian=0) if i < 12 else dict(l, id=i) for i, l in enumerate(lines)]
    data = write_lines(tmp_path / "typo.jsonl", lines)
    proc = run("data", "inspect", "--data", data, "--tokenizer", world["student"])
    assert proc.stderr.count("ignored fields") == 1
    assert "typo.jsonl: ignored fields: id (4 lines), is_domian (12 lines)" in proc.stderr
    assert "ignored     fields (lines): id 4, is_domian 12" in proc.stdout
    cfg = write_config(tmp_path / "run.yaml", world, tmp_path / "out", training_data_path=str(data), max_steps=1,
                       data_cache_dir=str(tmp_path / "cache"))
    for _ in range(2):  # the second run reads the tokenized-dataset cache and still reports them
        proc = run("distill", "--config", cfg, "--set", "overwrite=true")
        assert proc.stderr.count("typo.jsonl: ignored fields: id (4 lines), is_domian (12 lines)") == 1
    clean = write_lines(tmp_path / "clean.jsonl", reference_lines(rows_of(world["train.jsonl"])[:4], flag=lambda r: 0))
    proc = run("data", "inspect", "--data", clean, "--tokenizer", world["student"])
    assert "ignored fields" not in proc.stderr and "ignored     no fields" in proc.stdout


def test_reference_keys_that_kdae_cannot_honour_fail_naming_them(world, tmp_path):
    common = ["--set", f"base_model_path={world['student']}", "--set", f"target_model_path={world['teacher']}",
              "--set", f"training_data_path={world['train.jsonl']}", "--set", f"output_dir={tmp_path / 'out'}"]
    for key in ("load_in_8bit", "load_in_4bit"):
        text = (ASSETS / "run_kd.yml").read_text().replace(f"{key}: False", f"{key}: True")
        cfg = tmp_path / f"{key}.yml"
        cfg.write_text(text)
        line = next(i for i, l in enumerate(text.splitlines(), 1) if l.startswith(key))
        proc = run("distill", "--config", cfg, *common, check=False)
        assert proc.returncode == 1 and f"{key}.yml:{line}: key '{key}'" in proc.stderr, proc.stderr
        assert not (tmp_path / "out").exists()
    # resume_from_checkpoint: True means "the newest checkpoint", as in the reference; there is none yet.
    text = (ASSETS / "run_kd.yml").read_text().replace("resume_from_checkpoint: False", "resume_from_checkpoint: True")
    cfg = tmp_path / "resume.yml"
    cfg.write_text(text)
    proc = run("distill", "--config", cfg, *common, check=False)
    assert proc.returncode == 1 and "True" not in proc.stderr.split("error:")[-1]


def dump(world, data, tmp_path, name):
    out = tmp_path / f"{name}.dump.jsonl"
    run("data", "inspect", "--data", data, "--tokenizer", world["student"], "--dump-json", out)
    return [json.loads(l) for l in out.read_text().splitlines()]


def test_reference_pickles_read_as_their_jsonl(world, tmp_path):
    rows = rows_of(world["mixed.jsonl"])[:20]
    lines = reference_lines(rows, flag=lambda r: r.get("domain", 0))
    want = dump(world, write_lines(tmp_path / "ref.jsonl", lines), tmp_path, "jsonl")
    assert {s["domain"] for s in want} == {"general", "domain"}
    for protocol in (2, 3, 4, 5):
        pairs = [(l["text"], bool(l["is_domain"]) if i % 2 else l["is_domain"]) for i, l in enumerate(lines)]
        got = dump(world, write_pickle(tmp_path / f"p{protocol}.pkl", pairs, protocol), tmp_path, f"p{protocol}")
        assert got == want, protocol
    texts = dump(world, write_pickle(tmp_path / "texts.pkl", [l["text"] for l in lines]), tmp_path, "texts")
    assert [s["ids"] for s in texts] == [s["ids"] for s in want] and {s["domain"] for s in texts} == {"general"}


def test_bad_pickles_fail_naming_file_and_place(world, tmp_path):
    good = pickle.dumps([("<s>[INST] a [/INST] b</s>", 1)] * 3)
    cases = {"truncated": (good[:-5], "ends early"), "flag": (pickle.dumps([("<s>[INST] a [/INST] b</s>", 2)]), "item 1"),
             "object": (pickle.dumps([pathlib.PurePosixPath("x")]), "opcode"),
             "tuple": (pickle.dumps(("<s>[INST] a [/INST] b</s>",)), "no list of samples")}
    for name, (data, message) in cases.items():
        path = tmp_path / f"{name}.pkl"
        path.write_bytes(data)
        proc = run("data", "inspect", "--data", path, "--tokenizer", world["student"], check=False)
        assert proc.returncode == 1 and f"{name}.pkl" in proc.stderr and message in proc.stderr, (name, proc.stderr)
