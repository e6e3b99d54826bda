"""Serving throughput: `kdae serve` with 1, 4 and 16 concurrent greedy clients (tokens/s of the whole job)
vs transformers' batched `generate` of the same prompts in the same run. The model is the demo's teacher
(SmolLM2-135M-Instruct, converted by scripts/demo.sh) when present, else a random model of its shape.
Usage: python bench/serve_throughput.py [--device cpu|cuda] [--dtype float32|bfloat16] [--tokens 64]"""
import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import torch
import transformers

KDAE = os.environ.get("KDAE_BIN", str(pathlib.Path(__file__).resolve().parents[1] / "build/kdae"))
TEACHER = pathlib.Path(os.environ.get("KDAE_HOME", pathlib.Path.home() / ".cache/kdae")) / "models/smollm2-135m-instruct"
TOPICS = ["the sea", "a city at night", "bread", "mountains", "a library", "rain", "trains", "a garden",
          "the moon", "winter", "a market", "music", "bees", "a bridge", "the desert", "clocks"]


def model_dir(tmp):
    """(directory, chat template flag for kdae serve): the demo's teacher, else a random model of its shape over
    the tests' character vocabulary with ChatML turns (no hub access needed, e.g. on the GPU machine)."""
    if (TEACHER / "config.json").exists():
        return TEACHER, "auto"
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests/python"))
    from train_fixtures import SPECIALS, write_tokenizer
    d = pathlib.Path(tmp) / "m"
    vocab = write_tokenizer(d)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                   num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                                   tie_word_embeddings=True, eos_token_id=SPECIALS.index("<|im_end|>"), pad_token_id=0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(d)
    return d, "chatml"


def chat_text(tok, prompt):
    if tok.chat_template:
        return tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


def kdae_round(url, prompts, budgets):
    results = [None] * len(prompts)

    def client(i):
        results[i] = post(url + "/v1/chat/completions", {"messages": [{"role": "user", "content": prompts[i]}],
                                                          "max_tokens": budgets[i], "temperature": 0})

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    return sum(r["usage"]["completion_tokens"] for r in results) / seconds


def hf_round(model, tok, prompts, budgets, device):
    texts = [chat_text(tok, p) for p in prompts]
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max(budgets), do_sample=False, pad_token_id=tok.pad_token_id)
    if device != "cpu":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    new = out[:, batch["input_ids"].shape[1]:]
    produced = 0
    for row, budget in zip(new.tolist(), budgets):  # tokens before EOS within the client's budget, as the server counts
        produced += min(budget, row.index(tok.eos_token_id) if tok.eos_token_id in row else len(row))
    return produced / seconds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--budgets", default="equal,mixed")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        d, template = model_dir(tmp)
        dtype = getattr(torch, a.dtype)
        hf = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=dtype).to(a.device).eval()
        tok = transformers.AutoTokenizer.from_pretrained(d, padding_side="left")
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        if tok.eos_token is None:
            tok.eos_token = "<|im_end|>"
        server = subprocess.Popen([KDAE, "serve", "--model", str(d), "--port", "0", "--max-batch", "16", "--template", template, "--device",
                                   a.device, "--dtype", a.dtype, "--threads", str(a.threads)],
                                  stderr=subprocess.PIPE, text=True)
        url = re.search(r"listening on (http://[\d.:]+)", server.stderr.readline()).group(1)
        threading.Thread(target=server.stderr.read, daemon=True).start()
        try:
            kdae_round(url, ["warm up"], [4])
            hf_round(hf, tok, ["warm up"], [4], a.device)
            print(f"model {d.name}, {a.device} {a.dtype}, median of {a.rounds} rounds, side by side")
            # Equal budgets: every client wants --tokens. Mixed budgets (1/4, 1/2, 1, 2 x --tokens in turn): what
            # serving sees, where a batched generate runs every row until the longest one ends.
            print(f"{'budgets':>8} {'clients':>8} {'kdae tok/s':>11} {'HF tok/s':>9} {'ratio':>6}")
            for mixed in [b == "mixed" for b in a.budgets.split(",")]:
                for clients in [int(c) for c in a.clients.split(",")]:
                    prompts = [f"Write a few sentences about {t}." for t in TOPICS[:clients]]
                    budgets = [a.tokens * [1, 2, 4, 8][i % 4] // 4 if mixed else a.tokens for i in range(clients)]
                    ours, theirs = [], []
                    for _ in range(a.rounds):
                        ours.append(kdae_round(url, prompts, budgets))
                        theirs.append(hf_round(hf, tok, prompts, budgets, a.device))
                    k, h = statistics.median(ours), statistics.median(theirs)
                    label = "mixed" if mixed else "equal"
                    print(f"{label:>8} {clients:>8} {k:>11.1f} {h:>9.1f} {k / h:>5.2f}x", flush=True)
            with urllib.request.urlopen(url + "/health") as r:
                print("server:", r.read().decode())
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    sys.exit(main())
