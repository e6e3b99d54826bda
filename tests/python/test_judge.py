"""`kdae judge` against `kdae serve` (a real OpenAI-compatible endpoint on loopback) and with a local judge
directory. The served judge is a bigram machine built by hand that answers every prompt with "[7]": every
judgment parses (FastChat's backup pattern) and the table says 7.00. A random model's judgments do not
parse: they are counted as unparsable, written with score -1, and never averaged."""
import json
import pathlib
import re

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from test_serve import Server
from train_fixtures import SPECIALS, make_model, run, write_tokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2]
QUESTIONS = ROOT / "data/eval/questions.jsonl"
INSTRUCTIONS = ROOT / "data/eval/instructions.json"


def char_id(c):
    return len(SPECIALS) + (95 if c == "\n" else ord(c) - 32)


def make_bigram_judge(d: pathlib.Path, reply: str):
    """Attention and MLP outputs are zero, so the last hidden state is the current token's one-hot embedding
    and the head maps each token of "\\n" + reply to its successor (and anything else to <|im_end|>)."""
    vocab = write_tokenizer(d)
    hidden = 128
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=16, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=8192,
                      tie_word_embeddings=False, eos_token_id=SPECIALS.index("<|im_end|>"), pad_token_id=0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.model.embed_tokens.weight[:, :vocab].copy_(torch.eye(vocab))
        for norm in [model.model.norm, model.model.layers[0].input_layernorm,
                     model.model.layers[0].post_attention_layernorm]:
            norm.weight.fill_(1)
        head = model.lm_head.weight
        head[SPECIALS.index("<|im_end|>"), :vocab] = 1.0
        chain = "\n" + reply
        for a, b in zip(chain, chain[1:]):
            head[char_id(b), char_id(a)] = 10.0
    model.save_pretrained(d, safe_serialization=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge")
    make_model(root / "student", seed=5, hidden=48, layers=2, heads=4, kv_heads=2, sharpen=4.0)
    make_model(root / "random-judge", seed=9, hidden=32, layers=1, heads=4, kv_heads=2)
    rj = json.loads((root / "random-judge/config.json").read_text())
    rj["max_position_embeddings"] = 8192  # room for the judge prompts
    (root / "random-judge/config.json").write_text(json.dumps(rj))
    make_bigram_judge(root / "bigram-judge", "[7]")
    answers = root / "model_answer" / "student.jsonl"
    run("answer", "--model", root / "student", "--template", "chatml", "--bench", "mt-bench", "--questions", QUESTIONS,
        "--out", answers, "--max-new-tokens", "12", "--threads", "1")
    run("answer", "--model", root / "student", "--template", "chatml", "--bench", "alpaca-eval", "--questions",
        INSTRUCTIONS, "--out", root / "outputs.json", "--max-new-tokens", "12", "--threads", "1")
    return root


def judge_mt_bench(world, out, *judge):
    return run("judge", "--bench", "mt-bench", "--questions", QUESTIONS, "--answers", world / "model_answer/student.jsonl",
               "--out", out, "--summary", out.with_suffix(".summary.json"), "--judge-max-tokens", "8", *judge)


def table_row(stdout, model):
    return next(line.split() for line in stdout.splitlines() if line.startswith(model + " "))


def test_served_judge_ratings_parse(world, tmp_path):
    server = Server(world / "bigram-judge")
    try:
        r = judge_mt_bench(world, tmp_path / "j.jsonl", "--judge-url", server.url + "/v1", "--judge-model",
                           "bigram-judge")
        served = server.health()["sequences"]
    finally:
        server.stop()
    lines = [json.loads(x) for x in (tmp_path / "j.jsonl").read_text().splitlines()]
    assert len(lines) == 16 and served == 16
    assert all(x["judgment"] == "[7]" and x["score"] == 7 for x in lines)
    assert {x["turn"] for x in lines} == {1, 2}
    math = [x for x in lines if x["question_id"] == 4]
    assert [x["judge"] for x in math] == [["bigram-judge", "single-math-v1"], ["bigram-judge", "single-math-v1-multi-turn"]]
    assert "15 + 27 = 42." in math[0]["user_prompt"]
    assert table_row(r.stdout, "student") == ["student", "7.00", "7.00", "7.00", "16", "0"]
    summary = json.loads((tmp_path / "j.summary.json").read_text())
    assert summary["student"]["overall"] == {"mean": 7.0, "scored": 16, "unparsable": 0}


def test_unparsable_judgments_are_counted_not_scored(world, tmp_path):
    server = Server(world / "random-judge")
    try:
        r = judge_mt_bench(world, tmp_path / "j.jsonl", "--judge-url", server.url + "/v1", "--judge-model",
                           "random-judge")
    finally:
        server.stop()
    lines = [json.loads(x) for x in (tmp_path / "j.jsonl").read_text().splitlines()]
    unparsable = [x for x in lines if not re.search(r"\[(\d+\.?\d*)\]", x["judgment"])]
    assert len(unparsable) > 8 and all(x["score"] == -1 for x in unparsable)
    row = table_row(r.stdout, "student")
    assert int(row[-1]) == len(unparsable) and int(row[-2]) == 16 - len(unparsable)


def test_local_judge_pairwise_against_reference(world, tmp_path):
    r = run("judge", "--bench", "alpaca-eval", "--answers", world / "outputs.json", "--reference", world / "outputs.json",
            "--out", tmp_path / "p.jsonl", "--judge-model", world / "bigram-judge", "--template", "chatml",
            "--judge-max-tokens", "8", "--threads", "1")
    lines = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and all(x["winner"] == "error" and x["judgment"] == "[7]" for x in lines)
    assert table_row(r.stdout, "student")[6] == "6"  # unparsable verdicts, counted
