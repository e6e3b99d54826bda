"""The examples are a recipe that runs: examples/run_kd.yaml, then examples/run_dae.yaml on the student it
writes, exactly as written (relative paths resolved in a working directory laid out as the examples expect:
models/, data/, runs/), on tiny models. Only what the files point at is tiny; no key is overridden."""
import json
import os
import pathlib
import shutil

import pytest

from train_fixtures import make_domain_world, metrics, mistral_text_rows, run

EXAMPLES = pathlib.Path(os.environ.get("KDAE_ROOT", pathlib.Path(__file__).resolve().parents[2])) / "examples"


def inst_lines(path, domain=None):
    rows = [json.loads(l) for l in pathlib.Path(path).read_text().splitlines()]
    return mistral_text_rows(rows, domain, flag_key="domain")


def write_lines(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(l) + "\n" for l in lines))


def test_kd_then_dae_examples_run_as_written(tmp_path, monkeypatch):
    monkeypatch.setenv("KDAE_HOME", str(tmp_path / "kdae-home"))  # the examples' data_cache_dir default
    w = make_domain_world(tmp_path / "world", n_train=64, n_domain=16, n_eval=8)
    work = tmp_path / "work"
    (work / "models").mkdir(parents=True)
    os.symlink(w["student"], work / "models" / "student")
    os.symlink(w["teacher"], work / "models" / "teacher")
    os.symlink(w["expert"], work / "models" / "domain-expert")
    write_lines(work / "data" / "train.jsonl", inst_lines(w["train.jsonl"]))
    write_lines(work / "data" / "eval.jsonl", inst_lines(w["eval.jsonl"]))
    write_lines(work / "data" / "dae.jsonl", inst_lines(w["mixed.jsonl"], domain=lambda r: r.get("domain", 0)))
    for name in ("run_kd.yaml", "run_dae.yaml"):
        shutil.copy(EXAMPLES / name, work / name)

    run("distill", "--config", "run_kd.yaml", cwd=work)
    kd = metrics(work / "runs" / "kd")
    assert kd and all(m["train/attn_loss"] > 0 for m in kd if "train/attn_loss" in m)
    assert (work / "runs" / "kd" / "model" / "model.safetensors").exists()

    run("align", "--config", "run_dae.yaml", cwd=work)
    dae = metrics(work / "runs" / "dae")
    assert any("train/domain/kd_loss" in m for m in dae) and any("train/general/kd_loss" in m for m in dae)
    assert (work / "runs" / "dae" / "model" / "model.safetensors").exists()
