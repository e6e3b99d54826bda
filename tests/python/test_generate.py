"""`kdae generate` greedy output equals transformers' greedy generate (KV cache on both sides)."""
import os
import subprocess

import torch

KDAE = os.environ.get("KDAE_BIN", "kdae")


def tiny_char_model(path):
    """A 2-layer Mistral with a sliding window of 6 over a character vocabulary, saved to `path`."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    vocab = {chr(ord("a") + i): i for i in range(26)}
    vocab.update({" ": 26, "<s>": 27, "</s>": 28})
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.add_special_tokens(["<s>", "</s>"])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>")
    torch.manual_seed(3)
    config = transformers.MistralConfig(vocab_size=32, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, sliding_window=6,
                                        bos_token_id=27, eos_token_id=28)
    model = transformers.MistralForCausalLM(config).eval()
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return model, fast


def test_greedy_matches_transformers(tmp_path):
    model, fast = tiny_char_model(tmp_path / "m")
    prompt = "hello world"
    ids = fast(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        ref = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                             pad_token_id=0)[0, len(ids):].tolist()
    r = subprocess.run([KDAE, "generate", "--model", str(tmp_path / "m"), "--prompt", prompt, "--max-new-tokens", "12",
                        "--print-ids", "--threads", "1"], capture_output=True, text=True, check=True)
    ours = [int(x) for x in r.stderr.split("ids:")[1].split()]
    expected = ref[: ref.index(28)] if 28 in ref else ref
    assert ours == expected and len(ours) > 0


def run_batch(tmp_path, prompts, name, *flags):
    import json
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    out = tmp_path / f"{name}.jsonl"
    subprocess.run([KDAE, "generate", "--model", str(tmp_path / "m"), "--input", str(src), "--output", str(out),
                    "--threads", "1", *flags], capture_output=True, text=True, check=True)
    return [json.loads(line)["response"] for line in out.read_text().splitlines()]


def test_batched_decoding_equals_one_by_one(tmp_path):
    """Continuous batching (left-padded rows, sequences joining and leaving, windows shorter than the
    sequences) gives every prompt the tokens it gets alone: greedy equals transformers, sampling
    equals batch size 1 with the same seed."""
    model, fast = tiny_char_model(tmp_path / "m")
    prompts = ["hello world", "a", "the quick brown fox", "xyz", "lorem ipsum dolor sit", "ba"]
    expected = []
    for p in prompts:
        ids = fast(p, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            # An explicit mask: transformers would otherwise take token 0 ('a') for padding.
            ref = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=10, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)[0, len(ids):].tolist()
        ref = ref[: ref.index(28)] if 28 in ref else ref
        expected.append(fast.decode(ref, skip_special_tokens=True))
    for size in ["1", "3", "8"]:
        assert run_batch(tmp_path, prompts, f"greedy{size}", "--max-new-tokens", "10", "--batch-size", size) == expected
    sampled = [run_batch(tmp_path, prompts, f"sample{size}", "--max-new-tokens", "10", "--batch-size", size,
                         "--temperature", "1.5", "--seed", "7") for size in ["1", "4"]]
    assert sampled[0] == sampled[1] and sampled[0] != expected
