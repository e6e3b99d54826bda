"""`kdae chat` keeps the conversation: piped turns each get an answer, turn 2's rendered prompt holds turn 1's
exchange, and the greedy turn-1 answer equals `kdae generate --chat` (and batch mode) for the same prompt.
Uses the real SmolLM2-135M-Instruct teacher, converted by scripts/test.sh (and scripts/demo.sh); run outside them
without it, the module skips with that reason."""
import json
import os
import pathlib
import subprocess

import pytest

KDAE = os.environ.get("KDAE_BIN", "kdae")
TEACHER = pathlib.Path(os.environ.get("KDAE_HOME", pathlib.Path.home() / ".cache/kdae")) / "models/smollm2-135m-instruct"
pytestmark = pytest.mark.skipif(not (TEACHER / "config.json").exists(), reason="no teacher: scripts/test.sh converts it (ensure_teacher in scripts/setup.sh)")
COMMON = ["--model", str(TEACHER), "--max-new-tokens", "24", "--threads", "1"]


def test_two_turns_and_parity_with_generate(tmp_path):
    r = subprocess.run([KDAE, "chat", *COMMON, "--print-prompt"], input="What is the capital of France?\n"
                       "And of Japan?\n", capture_output=True, text=True, check=True)
    answers = r.stdout.strip().split("\n")
    assert len(answers) == 2 and all(a.strip() for a in answers)
    prompts = r.stderr.split("[prompt]\n")[1:]
    assert len(prompts) == 2
    first_exchange = ("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
                      + answers[0] + "<|im_end|>\n<|im_start|>user\nAnd of Japan?<|im_end|>")
    assert first_exchange in prompts[1] and first_exchange not in prompts[0]
    single = subprocess.run([KDAE, "generate", *COMMON, "--chat", "--prompt", "What is the capital of France?"],
                            capture_output=True, text=True, check=True)
    assert single.stdout.strip() == answers[0]
    (tmp_path / "in.jsonl").write_text(json.dumps({"prompt": "What is the capital of France?"}) + "\n")
    subprocess.run([KDAE, "generate", *COMMON, "--chat", "--input", str(tmp_path / "in.jsonl"), "--output",
                    str(tmp_path / "out.jsonl")], capture_output=True, text=True, check=True)
    row = json.loads((tmp_path / "out.jsonl").read_text())
    assert row == {"prompt": "What is the capital of France?", "response": answers[0]}


def test_reset_forgets_the_conversation():
    r = subprocess.run([KDAE, "chat", *COMMON, "--print-prompt"], input="Hello!\n/reset\nName a fruit.\n/exit\nunused\n",
                       capture_output=True, text=True, check=True)
    prompts = r.stderr.split("[prompt]\n")[1:]
    assert len(prompts) == 2 and "Hello!" not in prompts[1] and len(r.stdout.strip().split("\n")) == 2


def test_bad_batch_line_names_file_and_line(tmp_path):
    bad = tmp_path / "in.jsonl"
    bad.write_text(json.dumps({"prompt": "ok"}) + "\n" + "{not json\n")
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    r = subprocess.run([KDAE, "generate", *COMMON, "--input", str(bad), "--output", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and f"{bad}:2" in r.stderr and out.read_text() == "old\n"
