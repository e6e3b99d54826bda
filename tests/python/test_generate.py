"""`kdae generate` greedy output equals transformers' greedy generate (KV cache on both sides)."""
import os
import subprocess

import torch

KDAE = os.environ.get("KDAE_BIN", "kdae")


def test_greedy_matches_transformers(tmp_path):
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
    model.save_pretrained(tmp_path / "m")
    fast.save_pretrained(tmp_path / "m")
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
