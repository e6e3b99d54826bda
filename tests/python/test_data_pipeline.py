"""`kdae data inspect --dump-json` against HF: for messages, Alpaca and prompt/response lines, the ids equal
transformers' apply_chat_template(tokenize=False) text encoded without special tokens, and the supervised mask
equals the assistant contents + end-of-turn tokens located independently in that text (a token is supervised
iff it shares a character with such a span)."""
import json
import os
import pathlib
import subprocess

import pytest
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from test_chat_template import LLAMA3, MISTRAL_V02
from tokenizer_fixtures import fixture_dir

KDAE = os.environ.get("KDAE_BIN", "kdae")

LINES = [
    {"messages": [{"role": "system", "content": "You answer briefly."},
                  {"role": "user", "content": "What is the capital of France?"},
                  {"role": "assistant", "content": "Paris."},
                  {"role": "user", "content": "And of Japan? Écris-le en 日本語 too."},
                  {"role": "assistant", "content": "Tokyo, 東京 🗼."}], "domain": "geo"},
    {"instruction": "Summarise the text.", "input": "Cats sleep  a lot;\nthey hunt at night.",
     "output": "Cats sleep by day and hunt at night.", "domain": 1, "weight": 2.0},
    {"instruction": "Name a prime number.", "output": "7"},
    {"prompt": "def f(x):\n    return x*2\n# what does f(3) return?", "response": "f(3) returns 6.", "domain": 0},
    {"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "  hi there  "}]},
]

# family -> (fixture, --template, Jinja for transformers (None = the fixture's chat_template.jinja),
#            bos, eos, end-of-turn text, whether the template trims contents)
CASES = {
    "smollm2": ("smollm2", None, None, "<|im_start|>", "<|im_end|>", "<|im_end|>", False),
    "mistral": ("mistral-metaspace", "mistral", MISTRAL_V02, "<s>", "</s>", "</s>", False),
    "llama3": ("llama3", "llama3", LLAMA3, "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", True),
}


def conversation(line):
    if "messages" in line:
        return line["messages"]
    if "instruction" in line:
        user = line["instruction"] + ("\n\n" + line["input"] if line.get("input") else "")
        return [{"role": "user", "content": user}, {"role": "assistant", "content": line["output"]}]
    return [{"role": "user", "content": line["prompt"]}, {"role": "assistant", "content": line["response"]}]


def expected_mask(text, messages, eot, trims, offsets):
    spans, pos = [], 0
    for m in messages:
        if m["role"] != "assistant":
            continue
        piece = (m["content"].strip() if trims else m["content"]) + eot
        start = text.index(piece, pos)
        spans.append((start, start + len(piece)))
        pos = start + len(piece)
    return [int(any(a < e and b > s for s, e in spans) and a < b) for a, b in offsets]


@pytest.mark.parametrize("family", sorted(CASES))
def test_ids_and_masks_match_hf(family, tmp_path):
    fixture, template, jinja, bos, eos, eot, trims = CASES[family]
    d = fixture_dir(fixture)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in LINES), encoding="utf-8")
    dump = tmp_path / "dump.jsonl"
    cmd = [KDAE, "data", "inspect", "--data", str(data), "--tokenizer", str(d), "--dump-json", str(dump),
           "--seq-length", "4096"] + (["--template", template] if template else [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ours = [json.loads(x) for x in dump.read_text().splitlines()]
    assert len(ours) == len(LINES)

    hf = PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json"), bos_token=bos, eos_token=eos)
    hf.chat_template = jinja or (d / "chat_template.jinja").read_text()
    # Offsets from the raw pipeline without post-processing, so no offset trimming hides a straddling token.
    raw = json.loads((d / "tokenizer.json").read_text())
    raw["post_processor"] = None
    plain = Tokenizer.from_str(json.dumps(raw))
    for line, sample, n in zip(LINES, ours, range(len(LINES))):
        messages = conversation(line)
        text = hf.apply_chat_template(messages, tokenize=False)
        ids = hf(text, add_special_tokens=False)["input_ids"]
        enc = plain.encode(text, add_special_tokens=False)
        assert enc.ids == ids
        assert sample["ids"] == ids, f"line {n + 1}"
        mask = expected_mask(text, messages, eot, trims, enc.offsets)
        assert sample["supervised"] == mask, f"line {n + 1}"
        assert sum(mask) >= 2
        assert sample["line"] == n + 1
    assert [s["domain"] for s in ours] == ["geo", "domain", "general", "general", "general"]
    assert [s["weight"] for s in ours] == [1.0, 2.0, 1.0, 1.0, 1.0]
    assert "samples     5 kept" in r.stdout and "[[" in r.stdout


def test_inspect_reports_skips_and_errors(tmp_path):
    d = fixture_dir("smollm2")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(LINES[2]) + "\n" + json.dumps(LINES[2]) + "\n" + '{"text": "no markers"}\n')
    r = subprocess.run([KDAE, "data", "inspect", "--data", str(data), "--tokenizer", str(d), "--dedup"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "skipped     2: duplicate 1, no [INST] marker 1" in r.stdout
    data.write_text(json.dumps(LINES[2]) + '\n{"prompt": "x", "response": "y", "domain": 3}\n')
    r = subprocess.run([KDAE, "data", "inspect", "--data", str(data), "--tokenizer", str(d)],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert f"{data}:2: domain must be 0/1 or a name" in r.stderr
    r = subprocess.run([KDAE, "data", "inspect", "--data", str(data), "--tokenizer", str(d), "--template", "nope"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "nope" in r.stderr
