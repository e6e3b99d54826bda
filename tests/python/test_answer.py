"""`kdae answer` writes what the benchmarks' own loaders read: FastChat's `load_model_answers` (MT-Bench) and
AlpacaEval's `load_or_convert_to_dataframe`. Greedy answers equal `kdae generate --chat`; both turns of a
question share one conversation; a re-run answers only the missing questions; a bad question file fails
naming its line and leaves the answers alone."""
import importlib.abc
import importlib.machinery
import json
import pathlib
import sys
import types

import pytest

from train_fixtures import make_model, run

ROOT = pathlib.Path(__file__).resolve().parents[2]
QUESTIONS = ROOT / "data/eval/questions.jsonl"
INSTRUCTIONS = ROOT / "data/eval/instructions.json"


class _Stub(types.ModuleType):
    __path__ = []

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *a, **k: None


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """The loaders' packages import API clients and statistics libraries they do not need for reading files
    (installed --no-deps: requirements-nodeps.txt); those imports get empty modules."""
    roots = {"anthropic", "dotenv", "fire", "datasets", "scipy", "sklearn", "tiktoken"}

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(name, self)

    def create_module(self, spec):
        return _Stub(spec.name)

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _StubFinder())


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("answer") / "m"
    make_model(d, seed=5, hidden=48, layers=2, heads=4, kv_heads=2, sharpen=4.0)
    return d


def answer(model, bench, questions, out, *flags, check=True):
    return run("answer", "--model", model, "--template", "chatml", "--bench", bench, "--questions", questions,
               "--out", out, "--max-new-tokens", "16", "--threads", "1", *flags, check=check)


def chat(model, prompt):
    return run("generate", "--model", model, "--chat", "--template", "chatml", "--prompt", prompt,
               "--max-new-tokens", "16", "--threads", "1").stdout[:-1]


def test_mt_bench_answers_load_in_fastchat_and_resume(model, tmp_path):
    from fastchat.llm_judge.common import load_model_answers, load_questions
    out = tmp_path / "model_answer" / "student.jsonl"
    answer(model, "mt-bench", QUESTIONS, out, "--model-id", "student", "--batch-size", "3")
    questions = load_questions(str(QUESTIONS), None, None)
    answers = load_model_answers(str(tmp_path / "model_answer"))["student"]
    assert sorted(answers) == [q["question_id"] for q in questions]
    for q in questions:
        a = answers[q["question_id"]]
        assert a["model_id"] == "student" and len(a["choices"][0]["turns"]) == len(q["turns"]) == 2
    math = next(q for q in questions if q["category"] == "math")  # temperature 0 in FastChat's table
    assert answers[math["question_id"]]["choices"][0]["turns"][0] == chat(model, math["turns"][0])

    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:5]) + "\n")
    r = answer(model, "mt-bench", QUESTIONS, out, "--model-id", "student")
    assert "5 of 8 questions already answered" in r.stderr
    again = out.read_text().splitlines()
    assert again[:5] == lines[:5] and len(again) == 8
    reloaded = load_model_answers(str(tmp_path / "model_answer"))["student"]
    assert reloaded[math["question_id"]]["choices"] == answers[math["question_id"]]["choices"]


def test_alpaca_eval_outputs_load_in_alpaca_eval(model, tmp_path):
    from alpaca_eval.utils import load_or_convert_to_dataframe
    out = tmp_path / "outputs.json"
    answer(model, "alpaca-eval", INSTRUCTIONS, out, "--model-id", "student")
    df = load_or_convert_to_dataframe(str(out))
    instructions = [x["instruction"] for x in json.loads(INSTRUCTIONS.read_text())]
    assert list(df["instruction"]) == instructions and set(df["generator"]) == {"student"}
    assert df["output"].iloc[0] == chat(model, instructions[0])


def test_jsonl_bench_is_generate_batch_mode(model, tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text(json.dumps({"prompt": "hello"}) + "\n" + json.dumps({"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
        {"role": "user", "content": "again"}]}) + "\n")
    answer(model, "jsonl", src, tmp_path / "a.jsonl")
    run("generate", "--model", model, "--chat", "--template", "chatml", "--input", src, "--output", tmp_path / "g.jsonl",
        "--max-new-tokens", "16", "--threads", "1")
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "g.jsonl").read_text()


def test_bad_question_file_names_the_line(model, tmp_path):
    bad = tmp_path / "q.jsonl"
    bad.write_text(QUESTIONS.read_text().splitlines()[0] + "\n{\"question_id\": 9, \"turns\": \"not a list\"}\n")
    out = tmp_path / "a.jsonl"
    out.write_text("{\"question_id\": 1}\n")
    r = answer(model, "mt-bench", bad, out, check=False)
    assert r.returncode == 1 and f"{bad}:2" in r.stderr
    assert out.read_text() == "{\"question_id\": 1}\n"
