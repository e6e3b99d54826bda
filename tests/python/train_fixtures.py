"""A tiny, fully controlled distillation world for trainer tests.

- tokenizer: byte-level BPE whose vocabulary is printable ASCII plus newline (no merges), so any
  ASCII text round-trips exactly, plus the ChatML specials;
- teacher: a random tiny Llama with a sharpened head (peaked, context-dependent distributions);
- data: chat samples whose answers are sampled from the teacher itself, so a student that matches
  the teacher is also the best model of the data;
- students: smaller random Llamas (fresh init) sharing the tokenizer.
"""
import json
import os
import pathlib
import random
import subprocess

import torch
from transformers import LlamaConfig, LlamaForCausalLM

KDAE = os.environ.get("KDAE_BIN", "kdae")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHARS = [chr(c) for c in range(32, 127)] + ["\n"]


def _byte_char(c):
    # GPT-2's byte-to-unicode map for the bytes we use: printable ASCII maps to itself except space.
    return {" ": "\u0120", "\n": "\u010a"}.get(c, c)


def write_tokenizer(d: pathlib.Path):
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for c in CHARS:
        vocab[_byte_char(c)] = len(vocab)
    tok = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i, s in enumerate(SPECIALS)],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": []},
    }
    d.mkdir(parents=True, exist_ok=True)
    (d / "tokenizer.json").write_text(json.dumps(tok))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
        "add_bos_token": False, "add_eos_token": False, "model_max_length": 512,
        "tokenizer_class": "PreTrainedTokenizerFast"}))
    return len(vocab)


def make_model(d: pathlib.Path, seed: int, hidden: int, layers: int, heads: int, kv_heads: int, sharpen: float = 1.0,
               context: int = 256):
    vocab = write_tokenizer(d)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=context,
                      rms_norm_eps=1e-6, tie_word_embeddings=False, eos_token_id=SPECIALS.index("<|im_end|>"),
                      pad_token_id=0, bos_token_id=None, attn_implementation="eager")
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)
    model.save_pretrained(d, safe_serialization=True)
    return model


def render(prompt, answer=None):
    text = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    return text if answer is None else text + answer + "<|im_end|>\n"


def encode(text):
    ids, i = [], 0
    while i < len(text):
        for s in SPECIALS:
            if text.startswith(s, i):
                ids.append(SPECIALS.index(s))
                i += len(s)
                break
        else:
            ids.append(len(SPECIALS) + CHARS.index(text[i]))
            i += 1
    return ids


def sample_answers(teacher, prompts, length, seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for p in prompts:
        ids = torch.tensor([encode(render(p))])
        answer = []
        with torch.no_grad():
            for _ in range(length):
                logits = teacher(ids).logits[0, -1].clone()
                logits[: len(SPECIALS)] = -float("inf")  # plain text answers
                tok = torch.multinomial(torch.softmax(logits, -1), 1, generator=g)
                ids = torch.cat([ids, tok.view(1, 1)], 1)
                answer.append(CHARS[tok.item() - len(SPECIALS)])
        out.append("".join(answer))
    return out


def chat_rows(teacher, words, count, answer_len, seed, **extra):
    """count conversations: random prompts over `words`, answers sampled from `teacher`."""
    rng = random.Random(seed)
    prompts = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 4))) for _ in range(count)]
    answers = sample_answers(teacher, prompts, answer_len, seed=seed + 1)
    return [dict({"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}, **extra)
            for p, a in zip(prompts, answers)]


def write_rows(path: pathlib.Path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_world(root: pathlib.Path, n_train=96, n_eval=24, answer_len=16):
    """Teacher, student and data under root (built once per root)."""
    done = root / "world.json"
    if done.exists():
        return json.loads(done.read_text())
    teacher = make_model(root / "teacher", seed=1, hidden=64, layers=2, heads=4, kv_heads=2, sharpen=12.0)
    make_model(root / "student", seed=2, hidden=32, layers=1, heads=4, kv_heads=2)
    words = ["cat", "sun", "map", "red", "blue", "tree", "stone", "river", "code", "song", "list", "door"]
    rows = chat_rows(teacher, words, n_train + n_eval, answer_len, seed=3)
    write_rows(root / "train.jsonl", rows[:n_train])
    write_rows(root / "eval.jsonl", rows[n_train:])
    world = {k: str(root / k) for k in ("teacher", "student", "train.jsonl", "eval.jsonl")}
    done.write_text(json.dumps(world))
    return world


def mistral_text_rows(rows, flag=None, flag_key="is_domain"):
    """Chat rows in the reference's data shape: one Mistral-format string, plus flag_key when flag is set."""
    out = []
    for r in rows:
        m = r["messages"]
        line = {"text": f"<s>[INST] {m[0]['content']} [/INST] {m[1]['content']}</s>"}
        if flag is not None:
            line[flag_key] = flag(r)
        out.append(line)
    return out


def write_config(path: pathlib.Path, world, output_dir, **overrides):
    cfg = {
        "base_model_path": world["student"], "target_model_path": world["teacher"],
        "training_data_path": world["train.jsonl"], "eval_data_path": "", "output_dir": str(output_dir),
        "chat_template": "chatml", "seq_length": 64, "learning_rate": 3e-3, "train_batch_size": 8,
        "gradient_accumulation_steps": 1, "max_steps": 12, "warmup_steps": 0, "lr_scheduler": "constant",
        "weight_decay": 0.0, "random_seed": 7, "lambda_param": 1.0, "temperature": 1.0, "attn_weight": 0.0,
        "logging_steps": 1, "save_steps": 0, "save_fraction_of_epoch": 0, "device": "cpu", "dtype": "float32",
        "teacher_device": "cpu", "teacher_dtype": "float32", "threads": 1, "data_cache_dir": "none",
    }
    cfg.update(overrides)
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in cfg.items()))
    return path


def run(*args, check=True, **kw):
    proc = subprocess.run([KDAE, *map(str, args)], capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"kdae {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def metrics(output_dir):
    return [json.loads(l) for l in (pathlib.Path(output_dir) / "metrics.jsonl").read_text().splitlines() if l]


def make_domain_world(root: pathlib.Path, n_train=96, n_domain=48, n_eval=24, answer_len=16):
    """A general teacher and a domain expert (another random teacher) over the same tokenizer; general
    samples answered by the general teacher, domain samples (their own vocabulary of prompt words,
    "domain": 1) answered by the expert."""
    done = root / "domain-world.json"
    if done.exists():
        return json.loads(done.read_text())
    world = make_world(root, n_train=n_train, n_eval=n_eval, answer_len=answer_len)
    expert = make_model(root / "expert", seed=5, hidden=64, layers=2, heads=4, kv_heads=2, sharpen=12.0)
    words = ["price", "cart", "order", "refund", "shoe", "phone", "size", "ship", "deal", "brand"]
    rows = chat_rows(expert, words, n_domain + n_eval, answer_len, seed=6, domain=1)
    general = [json.loads(l) for l in pathlib.Path(world["train.jsonl"]).read_text().splitlines()]
    mixed = general + rows[:n_domain]
    random.Random(8).shuffle(mixed)
    write_rows(root / "mixed.jsonl", mixed)
    write_rows(root / "domain-eval.jsonl", rows[n_domain:])
    world.update({"expert": str(root / "expert"), "mixed.jsonl": str(root / "mixed.jsonl"),
                  "domain-eval.jsonl": str(root / "domain-eval.jsonl")})
    done.write_text(json.dumps(world))
    return world


def make_moe_model(d: pathlib.Path, seed: int, hidden: int, layers: int, experts: int, top_k: int, sharpen=1.0):
    from transformers import MixtralConfig, MixtralForCausalLM
    vocab = write_tokenizer(d)
    torch.manual_seed(seed)
    cfg = MixtralConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
                        num_local_experts=experts, num_experts_per_tok=top_k, router_aux_loss_coef=0.02,
                        tie_word_embeddings=False, eos_token_id=SPECIALS.index("<|im_end|>"), pad_token_id=0,
                        bos_token_id=None, sliding_window=None, attn_implementation="eager")
    model = MixtralForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)
    model.save_pretrained(d, safe_serialization=True)
    return model


def make_moe_world(root: pathlib.Path, n_train=96, n_eval=24, answer_len=16):
    """A 4-expert top-2 teacher, a fresh 2-expert top-1 student, answers sampled from the teacher."""
    done = root / "moe-world.json"
    if done.exists():
        return json.loads(done.read_text())
    teacher = make_moe_model(root / "teacher", seed=11, hidden=64, layers=2, experts=4, top_k=2, sharpen=12.0)
    make_moe_model(root / "student", seed=12, hidden=32, layers=2, experts=2, top_k=1)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "zeta"]
    rows = chat_rows(teacher, words, n_train + n_eval, answer_len, seed=13)
    write_rows(root / "train.jsonl", rows[:n_train])
    write_rows(root / "eval.jsonl", rows[n_train:])
    world = {k: str(root / k) for k in ("teacher", "student", "train.jsonl", "eval.jsonl")}
    done.write_text(json.dumps(world))
    return world
