"""kdae demo at tiny scale (train_fixtures world, 2-layer teacher pruned to 1 layer): the report holds
every row and section, its figures parse back equal to report.json, the degeneracy figures equal
those recomputed from the printed answers, and the KD student ends closer to the teacher than it
started."""
import json
import pathlib
import re
import shutil

import pytest

from train_fixtures import encode, make_world, run

ROWS = ["teacher", "initial (pruned)", "SFT", "KD"]


QUESTIONS = pathlib.Path(__file__).resolve().parents[2] / "data/eval/questions.jsonl"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    world = make_world(root / "world")
    data = root / "data"
    data.mkdir()
    shutil.copy(world["train.jsonl"], data / "train.jsonl")
    shutil.copy(world["eval.jsonl"], data / "heldout.jsonl")
    out = root / "out"
    proc = run("demo", "--teacher", world["teacher"], "--data", data, "--out", out, "--template", "chatml",
               "--keep-layers", 1, "--calibration-samples", 4, "--max-steps", 6, "--learning-rate", 1e-3,
               "--seq-length", 64, "--teacher-cache", "on", "--answers", 5, "--answer-tokens", 12, "--threads", 1,
               "--questions", QUESTIONS, "--judge-tokens", 8)
    md = (out / "report.md").read_text()
    assert proc.stdout == md
    return md, json.loads((out / "report.json").read_text()), out, (world, data)


def table(md):
    rows = {}
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] in ROWS:
            repeat, answers = cells[4].split(" / ")
            rows[cells[0]] = {"ce": float(cells[1]), "perplexity": float(cells[2]), "kl": float(cells[3]),
                              "with_repeat": int(repeat), "answers": int(answers), "distinct_ratio": float(cells[5])}
    return rows


def longest_run(ids):
    best = run_ = 0
    for i, t in enumerate(ids):
        run_ = run_ + 1 if i and t == ids[i - 1] else 1
        best = max(best, run_)
    return best


def test_report_rows_match_the_json(report):
    md, j, *_ = report
    parsed = table(md)
    assert list(parsed) == ROWS
    for row in j["rows"]:
        got = parsed[row["name"]]
        for key in ("ce", "perplexity", "kl", "distinct_ratio"):
            assert abs(got[key] - row[key]) <= 5e-4 * max(1.0, abs(row[key])), (row["name"], key)
        assert got["with_repeat"] == row["with_repeat"] and got["answers"] == row["answers"] == 5
    assert parsed["teacher"]["kl"] < 1e-3  # the teacher against itself
    assert parsed["KD"]["kl"] < parsed["SFT"]["kl"] < parsed["initial (pruned)"]["kl"]
    assert len(j["student_layers"]) == 1


def test_degeneracy_figures_follow_from_the_answers(report):
    _, j, *_ = report
    for row in j["rows"]:
        ids = [encode(a) for a in row["sample_answers"]]  # one token per character in this tokenizer
        assert all(len(a) <= 12 for a in ids)
        assert row["with_repeat"] == sum(longest_run(a) >= 4 for a in ids)
        assert row["empty"] == sum(not a for a in ids)
        ratio = sum(len(set(a)) / len(a) if a else 0.0 for a in ids) / len(ids)
        assert abs(row["distinct_ratio"] - ratio) < 1e-9


def test_three_answers_per_model_are_printed(report):
    md, j, out, _ = report
    sections = re.split(r"\n### Prompt \d+: ", md)[1:]
    assert len(sections) == 3
    for p, section in enumerate(sections):
        for row in j["rows"]:
            assert f"**{row['name']}**:" in section
            answer = row["sample_answers"][p]
            if answer:
                assert "> " + answer.split("\n")[0] in section
    assert re.search(r"Total time: \d+ s \(pruning \d+ s, teacher cache \d+ s, KD \d+ s, SFT \d+ s", md)
    assert (out / "student-init" / "config.json").exists() and (out / "teacher-cache").is_dir()
    assert json.loads((out / "student-init" / "prune.json").read_text())["kept"] == j["student_layers"]


def test_judged_scores_follow_from_the_judgments(report):
    """The teacher judges teacher, SFT and KD on the bundled questions; the report's judged table equals what
    judgment.jsonl says (unparsable judgments counted, never averaged) and report.json."""
    md, j, out, _ = report
    lines = [json.loads(x) for x in (out / "judgment.jsonl").read_text().splitlines()]
    assert len(lines) == 3 * 16 and {x["model"] for x in lines} == {"teacher", "sft", "kd"}
    table = {}
    for line in md.split("| model | judged score |")[1].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        table[cells[0]] = cells[1:]
    assert set(table) == {"teacher", "SFT", "KD"}
    for name, key in [("teacher", "teacher"), ("SFT", "sft"), ("KD", "kd")]:
        scores = [x["score"] for x in lines if x["model"] == key]
        scored = [s for s in scores if s != -1]
        mean = f"{sum(scored) / len(scored):.2f}" if scored else "-"
        assert table[name] == [mean, str(len(scored)), str(len(scores) - len(scored))]
        row = next(r for r in j["rows"] if r["name"] == name)
        assert row["judged"]["scored"] == len(scored) and row["judged"]["unparsable"] == len(scores) - len(scored)
        answers = [json.loads(x) for x in (out / "model_answer" / f"{key}.jsonl").read_text().splitlines()]
        assert len(answers) == 8 and all(len(a["choices"][0]["turns"]) == 2 for a in answers)
    assert next(r for r in j["rows"] if r["name"] == "initial (pruned)")["judged"] is None


def test_a_rerun_into_the_same_out_replaces_the_earlier_run(report):
    """Users re-run the main job: the students, the teacher cache and the report are replaced, not mixed (the
    re-run distills on-policy, which needs the live teacher; with the cache it is refused)."""
    _, first, out, (world, data) = report
    run("demo", "--teacher", world["teacher"], "--data", data, "--out", out, "--template", "chatml",
        "--keep-layers", 1, "--calibration-samples", 2, "--max-steps", 2, "--learning-rate", 1e-3,
        "--seq-length", 64, "--teacher-cache", "off", "--on-policy", 1, "--answers", 2, "--answer-tokens", 4,
        "--threads", 1)
    second = json.loads((out / "report.json").read_text())
    assert (out / "kd" / "completions.jsonl").exists()  # the re-run's KD was on-policy (GKD)
    assert not (out / "judgment.jsonl").exists() and not (out / "model_answer").exists()  # no stale judgments
    assert [r["answers"] for r in second["rows"]] == [2] * 4
    assert second["rows"][0]["ce"] == first["rows"][0]["ce"]  # the teacher row depends on nothing trained



def test_on_policy_with_the_teacher_cache_is_refused(report):
    _, _, out, (world, data) = report
    proc = run("demo", "--teacher", world["teacher"], "--data", data, "--out", out, "--teacher-cache", "on",
               "--on-policy", 0.5, check=False)
    assert proc.returncode != 0 and "--on-policy needs the live teacher" in proc.stderr
